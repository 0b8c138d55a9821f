// Test-only: qlora-train that is killed (SIGKILL, as by kill -9) while writing one checkpoint, for the crash
// tests in tests/trainer (a killed single process; a killed rank 0 of a data-parallel job). Production binaries
// have no such switch: this program sets TrainerOptions::after_checkpoint_file, which qlora-train never does.
//
//   train_crash_mid_checkpoint <config.yaml> --step 4 --after rng_state.pt [--nproc 2]
//
// dies right after `--after` (a file name of trainer/checkpoint.h's listing) of checkpoint-<step> is written. With
// --nproc the launcher re-executes this program for each rank; rank 0 writes the checkpoints, so rank 0 dies.
#include <csignal>
#include <string>
#include <vector>

#include "apps/app_main.h"
#include "trainer/dist/launch.h"
#include "trainer/trainer.h"

int main(int argc, char** argv) {
  CLI::App cli{"qlora-train killed by SIGKILL in the middle of writing a checkpoint (tests only)"};
  std::string config_file, after;
  int64_t step = 0;
  int nproc = 0;
  cli.add_option("config", config_file, "training config (YAML)")->required();
  cli.add_option("--step", step, "the checkpoint (its step) whose write is cut")->required();
  cli.add_option("--after", after, "die right after writing this file of it, e.g. optimizer.pt")->required();
  cli.add_option("--nproc", nproc, "start this many local data-parallel ranks, as qlora-train --nproc");
  return qlora::app::run(cli, argc, argv, [&]() {
    if (nproc > 0) return qlora::dist::launch_local_ranks(nproc, std::vector<std::string>(argv, argv + argc));
    qlora::trainer::TrainerOptions options;
    options.after_checkpoint_file = [&](int64_t s, const std::string& file) {
      if (s == step && file == after) std::raise(SIGKILL);
    };
    qlora::trainer::run_training(qlora::trainer::load_config(config_file), options);
    return 0;
  });
}
