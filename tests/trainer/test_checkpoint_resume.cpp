// Checkpoints that can never be lost (issue #20), through the training loop on the tiny model: a damaged newest
// checkpoint makes `resume: auto` warn and fall back, and the run still ends bitwise equal to an uninterrupted one
// (the reference); a second qlora-train on the same checkpoint.dir exits 2 naming it; SIGTERM stops like SIGINT
// (checkpoint, exit 130).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "checkpoint_test_util.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "lora/peft_io.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/checkpoint_manifest.h"
#include "trainer/trainer.h"

namespace qlora::trainer {
namespace {

using test::LogCapture;
using test::write_run;

void flip_byte(const fs::path& file, size_t at) {
  std::string bytes = read_file(file);
  bytes[at] = static_cast<char>(bytes[at] ^ 0x01);
  write_file_atomic(file, bytes);
}

class CheckpointResume : public test::TinyModelTest {};

TEST_F(CheckpointResume, AFlippedByteInTheNewestCheckpointFallsBackAndEndsTheSame) {
  const fs::path dir = test::temp_dir();
  const std::string ref_cfg = write_run(dir / "ref", 3);
  run_training(load_config(ref_cfg), {});

  const std::string cfg = write_run(dir / "run", 3);
  TrainerOptions stop_at_2;
  stop_at_2.stop_after_steps = 2;
  EXPECT_THROW(run_training(load_config(cfg), stop_at_2), Interrupted);
  const fs::path ck2 = dir / "run" / "ckpt" / "checkpoint-2";
  ASSERT_TRUE(fs::exists(ck2 / kManifestFile));
  // Each file of checkpoint-2 in turn: the checkpoint no longer verifies and auto-resume falls back to checkpoint-1.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(ck2)) names.push_back(e.path().filename().string());
  EXPECT_GE(names.size(), 7u);
  const fs::path pristine = dir / "checkpoint-2.pristine";
  fs::copy(ck2, pristine);
  for (const std::string& name : names) {
    flip_byte(ck2 / name, fs::file_size(ck2 / name) / 3);
    LogCapture log;
    EXPECT_EQ(CheckpointManager(dir / "run" / "ckpt", 0).latest_verified(), dir / "run" / "ckpt" / "checkpoint-1")
        << name;
    EXPECT_NE(log.text().find("checkpoint-2 is damaged"), std::string::npos) << name << ": " << log.text();
    fs::remove_all(ck2);
    fs::copy(pristine, ck2);
  }
  // The case end to end: the adapter file damaged, the run resumed with resume: auto.
  flip_byte(ck2 / lora::kAdapterWeightsFile, fs::file_size(ck2 / lora::kAdapterWeightsFile) - 5);
  LogCapture log;
  const TrainSummary s = run_training(load_config(cfg), {});
  EXPECT_EQ(s.start_step, 1);
  EXPECT_EQ(s.steps, 3);
  EXPECT_NE(log.text().find("falling back"), std::string::npos) << log.text();
  EXPECT_TRUE(read_file(dir / "run" / "out" / lora::kAdapterWeightsFile) ==
              read_file(dir / "ref" / "out" / lora::kAdapterWeightsFile))
      << "the resumed run's adapter differs from the uninterrupted run's";
  // checkpoint-2 was written again (replacing the damaged one by exchange) and verifies.
  std::string why;
  EXPECT_EQ(verify_manifest(ck2, &why), ManifestCheck::kVerified) << why;
}

// kill -9 while checkpoint-2 is being replaced (a run resumed from checkpoint-1 reaches step 2 again), after every
// file of the new one is written and before it is put in place: the old checkpoint-2 stays whole and verified, and
// the next run resumes from it and cleans up.
TEST_F(CheckpointResume, KilledWhileReplacingACheckpointKeepsTheOldOne) {
  const fs::path dir = test::temp_dir();
  std::string cfg = write_run(dir, 3);
  TrainerOptions stop_at_2;
  stop_at_2.stop_after_steps = 2;
  EXPECT_THROW(run_training(load_config(cfg), stop_at_2), Interrupted);
  const fs::path ck2 = dir / "ckpt" / "checkpoint-2";
  const std::string old_manifest = read_file(ck2 / kManifestFile);

  cfg = write_run(dir, 3, (dir / "ckpt" / "checkpoint-1").string());
  const auto killed =
      test::run_app("train_crash_mid_checkpoint", cfg + " --step 2 --after " + std::string(kManifestFile));
  EXPECT_EQ(killed.exit_code, 128 + SIGKILL) << killed.output;
  std::string why;
  EXPECT_EQ(verify_manifest(ck2, &why), ManifestCheck::kVerified) << why;
  EXPECT_EQ(read_file(ck2 / kManifestFile), old_manifest);
  bool leftover = false;
  for (const auto& e : fs::directory_iterator(dir / "ckpt")) {
    leftover |= e.path().filename().string().rfind("checkpoint-2.tmp-", 0) == 0;
  }
  EXPECT_TRUE(leftover) << "expected the new checkpoint-2, complete but not yet in place, as checkpoint-2.tmp-<pid>";

  cfg = write_run(dir, 3);
  const TrainSummary s = run_training(load_config(cfg), {});
  EXPECT_EQ(s.start_step, 2);
  EXPECT_EQ(s.steps, 3);
  for (const auto& e : fs::directory_iterator(dir / "ckpt")) {
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path() << " not cleaned up";
  }
}

TEST_F(CheckpointResume, ASecondRunOnTheSameDirIsRefusedAndSigtermStopsLikeSigint) {
  const fs::path dir = test::temp_dir();
  const std::string cfg = write_run(dir, 100000);
  const std::string log = (dir / "first.log").string();
  const pid_t first = test::start_app("qlora-train", {cfg}, log);
  ASSERT_GT(first, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline &&
         !(fs::exists(dir / "metrics.jsonl") && fs::file_size(dir / "metrics.jsonl") > 0)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // The second run: exit 2 with the folder and the first run's pid, and nothing written.
  const auto second = test::run_app("qlora-train", cfg);
  EXPECT_EQ(second.exit_code, 2) << second.output;
  EXPECT_NE(second.output.find((dir / "ckpt").string() + ": checkpoint.dir is in use by another training run (pid " +
                               std::to_string(first) + ")"),
            std::string::npos)
      << second.output;
  // SIGTERM, as a scheduler or `kill` sends it: the same clean stop as SIGINT.
  ::kill(first, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(first, &status, 0), first);
  ASSERT_TRUE(WIFEXITED(status)) << read_file(log);
  EXPECT_EQ(WEXITSTATUS(status), 130) << read_file(log);
  EXPECT_NE(read_file(log).find("checkpoint saved"), std::string::npos) << read_file(log);
  const auto latest = CheckpointManager(dir / "ckpt", 0).latest_verified();
  ASSERT_TRUE(latest.has_value());
  EXPECT_GE(read_trainer_state(*latest).step, 1);
}

}  // namespace
}  // namespace qlora::trainer
