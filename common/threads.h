// Thread count and stop signals, shared by every app.
#pragma once

namespace qlora {

// Sets LibTorch's intra-op thread count (LibTorch defaults to 1 here). n <= 0 means all cores.
// Returns the count in effect. Warns when n exceeds usable_cores(): every parallel step waits for its slowest
// thread, and a thread without a core waits out time slices (decode ran ~3x slower with 3 threads on 2 cores).
int configure_threads(int n);

// The CPUs this process may run on (its affinity mask; hardware_concurrency where that cannot be read).
int usable_cores();

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
