// Thread count and stop signals, shared by every app.
#pragma once

namespace qlora {

// Sets LibTorch's intra-op thread count (LibTorch defaults to 1 here). n <= 0 means all cores.
// Returns the count in effect.
int configure_threads(int n);

// How many threads at::parallel_for spreads a range over in our code: at::get_num_threads() when our kernels run
// on LibTorch's pool (the build compiles them with OpenMP, CMakeLists.txt), 1 when they run on the calling thread
// alone. configure_threads warns when it asked for more threads than this gives.
int parallel_for_threads();

// SIGINT/SIGTERM set a flag instead of killing the process; long loops poll stop_requested() and
// stop cleanly (the trainer saves a checkpoint first). A second signal kills at once.
void install_stop_handlers();
bool stop_requested();
void request_stop();  // for tests

}  // namespace qlora
