// Issue #20 item 3: the data files in the resume fingerprint (a changed read prefix refuses the resume naming the
// file, --force-resume warns, records appended after what was read resume), and `checkpoint.keep` by lineage (only
// this run's checkpoints are counted and deleted; an abandoned branch or another run's are left alone). The data
// reference is FNV-1a computed here from the file's bytes (common/hash.h checks it against FNV's published vectors).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "checkpoint_test_util.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/json_read.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/checkpoint_manifest.h"
#include "trainer/trainer.h"

namespace qlora::trainer {
namespace {

using test::error_of;
using test::LogCapture;
using test::write_run;

// ---- trainer_state.json ----

TEST(TrainerState, DataFilesAndLineageRoundTripAndOldStatesReadWithout) {
  TrainerState s;
  s.step = 6;
  s.data_files = std::vector<DataFileRead>{{"/data/a.jsonl", 1000, 400, 0x0123456789abcdefull}};
  s.lineage = continue_lineage(start_lineage(), 4);
  const nlohmann::json j = trainer_state_to_json(s);
  EXPECT_EQ(j.at("data_files").at(0).at("fnv1a64"), "0123456789abcdef");
  const TrainerState back = trainer_state_from_json(j, "t.json");
  ASSERT_TRUE(back.data_files.has_value());
  ASSERT_EQ(back.data_files->size(), 1u);
  EXPECT_EQ(back.data_files->at(0).path, "/data/a.jsonl");
  EXPECT_EQ(back.data_files->at(0).size, 1000);
  EXPECT_EQ(back.data_files->at(0).read_bytes, 400);
  EXPECT_EQ(back.data_files->at(0).fnv1a64, 0x0123456789abcdefull);
  EXPECT_EQ(back.lineage.run_id, s.lineage.run_id);
  ASSERT_EQ(back.lineage.segments.size(), 2u);
  EXPECT_EQ(back.lineage.segments[1].id, s.lineage.segments[1].id);
  EXPECT_EQ(back.lineage.segments[1].from_step, 4);

  nlohmann::json old = j;  // as written before these keys existed
  old.erase("data_files");
  old.erase("run_id");
  old.erase("lineage");
  const TrainerState o = trainer_state_from_json(old, "t.json");
  EXPECT_FALSE(o.data_files.has_value());
  EXPECT_TRUE(o.lineage.segments.empty());

  nlohmann::json bad = j;
  bad["data_files"][0]["fnv1a64"] = "xyz";
  EXPECT_CONTAINS(error_of([&] { (void)trainer_state_from_json(bad, "t.json"); }),
                  "t.json: data_files: bad entry for /data/a.jsonl");
  bad = j;
  bad["lineage"] = 3;
  EXPECT_CONTAINS(error_of([&] { (void)trainer_state_from_json(bad, "t.json"); }), "not a valid trainer state");
}

// ---- data files ----

TEST(DataFingerprint, MergeKeepsTheLongestPrefixPerFileAndTheSizeNow) {
  const fs::path dir = test::temp_dir();
  write_file_atomic(dir / "a.jsonl", std::string(100, 'a'));
  write_file_atomic(dir / "b.jsonl", std::string(50, 'b'));
  // Carried from the checkpoint resumed: all of a (80 bytes then), nothing of b.
  std::vector<DataFileRead> record = {{(dir / "a.jsonl").string(), 80, 80, 11}};
  const std::vector<fs::path> files = {dir / "a.jsonl", dir / "b.jsonl"};
  // This process read a up to 40 (a second epoch) and b up to 20.
  merge_data_reads(record, files, {{40, 22}, {20, 33}});
  ASSERT_EQ(record.size(), 2u);
  EXPECT_EQ(record[0].read_bytes, 80);  // the longer prefix stays
  EXPECT_EQ(record[0].fnv1a64, 11u);
  EXPECT_EQ(record[0].size, 100);  // the size now
  EXPECT_EQ(record[1].path, (dir / "b.jsonl").string());
  EXPECT_EQ(record[1].read_bytes, 20);
  EXPECT_EQ(record[1].fnv1a64, 33u);
  EXPECT_EQ(record[1].size, 50);
  merge_data_reads(record, files, {{100, 44}, {0, 0}});  // read past the carried prefix: the loader's wins
  EXPECT_EQ(record[0].read_bytes, 100);
  EXPECT_EQ(record[0].fnv1a64, 44u);
  EXPECT_EQ(record[1].read_bytes, 20);
  // The check: unchanged prefixes pass; a missing file is named.
  std::vector<DataFileRead> exact = {{(dir / "b.jsonl").string(), 50, 20, fnv1a64(std::string(20, 'b'))}};
  EXPECT_TRUE(describe_data_file_changes(exact).empty());
  exact.push_back({(dir / "gone.jsonl").string(), 7, 7, 0});
  const auto changes = describe_data_file_changes(exact);
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0], "data file " + (dir / "gone.jsonl").string() + " is missing (the run had read 7 bytes of it)");
}

// ---- lineage ----

TEST(Lineage, MembershipFollowsTheBranches) {
  const RunLineage first = start_lineage();               // a run that reached step 10
  const RunLineage resumed = continue_lineage(first, 4);  // the same run resumed from checkpoint-4
  EXPECT_EQ(resumed.run_id, first.run_id);
  EXPECT_NE(resumed.segments.back().id, first.segments.back().id);
  for (int64_t step = 1; step <= 10; ++step) {
    EXPECT_TRUE(in_lineage(first, first, step)) << step;
    EXPECT_EQ(in_lineage(resumed, first, step), step <= 4) << step;  // 5..10: the abandoned branch
  }
  EXPECT_TRUE(in_lineage(resumed, resumed, 4));  // the resumed segment rewriting its start checkpoint
  EXPECT_TRUE(in_lineage(resumed, resumed, 9));
  EXPECT_FALSE(in_lineage(first, resumed, 5)) << "the old run does not own the new branch";
  const RunLineage other = start_lineage();
  EXPECT_FALSE(in_lineage(resumed, other, 2));
  // Checkpoints written before lineages: owned up to the step a run resumed from them.
  const RunLineage legacy;
  const RunLineage from_legacy = continue_lineage(legacy, 5);
  EXPECT_TRUE(in_lineage(from_legacy, legacy, 5));
  EXPECT_FALSE(in_lineage(from_legacy, legacy, 6));
  EXPECT_TRUE(in_lineage(from_legacy, from_legacy, 7));
  EXPECT_FALSE(in_lineage(first, legacy, 1));
}

// A stand-in checkpoint-<step>: only trainer_state.json, with the lineage that wrote it.
void make_checkpoint(const fs::path& dir, int64_t step, const RunLineage& lineage) {
  const fs::path p = CheckpointManager::checkpoint_path(dir, step);
  fs::create_directories(p);
  TrainerState s;
  s.step = step;
  s.lineage = lineage;
  write_file_atomic(p / kTrainerStateFile, trainer_state_to_json(s).dump(2));
}

std::vector<int64_t> steps_in(const fs::path& dir) {
  std::vector<int64_t> out;
  for (const auto& [step, path] : CheckpointManager(dir, 0).list()) out.push_back(step);
  return out;
}

TEST(Lineage, PruneCountsOnlyThisLineageAndLeavesTheOthers) {
  const fs::path dir = test::temp_dir();
  const RunLineage first = start_lineage();
  for (int64_t step = 1; step <= 10; ++step) make_checkpoint(dir, step, first);
  const RunLineage resumed = continue_lineage(first, 4);
  make_checkpoint(dir, 5, resumed);
  make_checkpoint(dir, 6, resumed);
  make_checkpoint(dir, 11, RunLineage{});     // written before lineages, not this run's ancestor
  make_checkpoint(dir, 12, start_lineage());  // another run
  fs::create_directories(dir / "checkpoint-13");
  write_file_atomic(dir / "checkpoint-13" / kTrainerStateFile, "{ damaged");

  CheckpointManager m(dir, 2);
  {
    LogCapture log;
    m.prune(resumed);
    EXPECT_EQ(steps_in(dir), (std::vector<int64_t>{5, 6, 7, 8, 9, 10, 11, 12, 13}));
    EXPECT_CONTAINS(log.text(),
                    "leaving checkpoint-7, checkpoint-8, checkpoint-9, checkpoint-10, checkpoint-11, "
                    "checkpoint-12, checkpoint-13 in " +
                        dir.string() + " alone: not of this run's lineage");
    EXPECT_CONTAINS(log.text(), "cannot read the lineage of " + (dir / "checkpoint-13").string());
  }
  // The next save's prune: the newest two of the lineage again, the others named once only.
  make_checkpoint(dir, 7, resumed);
  LogCapture log;
  m.prune(resumed);
  EXPECT_EQ(steps_in(dir), (std::vector<int64_t>{6, 7, 8, 9, 10, 11, 12, 13}));
  EXPECT_EQ(log.text().find("leaving"), std::string::npos) << log.text();
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }
}

// ---- through the training loop ----

class ResumeChecks : public test::TinyModelTest {};

// The tiny run of 3 steps in `dir`, stopped after step 2 (checkpoint-2 written); returns its config path.
std::string run_two_of_three_steps(const fs::path& dir) {
  const std::string cfg = write_run(dir, 3);
  TrainerOptions stop_at_2;
  stop_at_2.stop_after_steps = 2;
  EXPECT_THROW(run_training(load_config(cfg), stop_at_2), Interrupted);
  return cfg;
}

// The run's record of train.jsonl in checkpoint `ck`, checked against the file's bytes.
DataFileRead expect_data_record(const fs::path& ck, const fs::path& train) {
  const TrainerState s = read_trainer_state(ck);
  EXPECT_TRUE(s.data_files.has_value());
  if (!s.data_files || s.data_files->size() != 1) {
    ADD_FAILURE() << "expected one data file in " << ck;
    return {};
  }
  const DataFileRead f = s.data_files->at(0);
  const std::string bytes = read_file(train);
  EXPECT_EQ(f.path, train.string());
  EXPECT_EQ(f.size, static_cast<int64_t>(bytes.size()));
  EXPECT_GT(f.read_bytes, 0);
  EXPECT_LT(f.read_bytes, f.size) << "the tiny run reads about half the file in two steps";
  EXPECT_EQ(f.fnv1a64, fnv1a64(std::string_view(bytes).substr(0, static_cast<size_t>(f.read_bytes))));
  return f;
}

TEST_F(ResumeChecks, AChangedDataFileRefusesTheResumeNamingItUnlessForced) {
  const fs::path dir = test::temp_dir();
  const std::string cfg = run_two_of_three_steps(dir);
  const fs::path train = dir / "train.jsonl";
  const DataFileRead read = expect_data_record(dir / "ckpt" / "checkpoint-2", train);
  const std::string original = read_file(train);

  // One byte of the first record (read long ago), same size: refused, naming the file.
  std::string changed = original;
  changed[original.find("Say 0.") + 4] = '9';
  write_file_atomic(train, changed);
  std::string msg = error_of([&] { run_training(load_config(cfg), {}); });
  EXPECT_CONTAINS(msg, (dir / "ckpt" / "checkpoint-2").string() + ": cannot resume: data file " + train.string() +
                           " changed: its first " + std::to_string(read.read_bytes) +
                           " bytes, which the run had read, differ");
  EXPECT_CONTAINS(msg, "HINT: resume with the original config and data files as the run read them");
  // Cut inside what was read: refused too.
  write_file_atomic(train, original.substr(0, static_cast<size_t>(read.read_bytes - 1)));
  msg = error_of([&] { run_training(load_config(cfg), {}); });
  EXPECT_CONTAINS(msg, "data file " + train.string() + " is now " + std::to_string(read.read_bytes - 1) +
                           " bytes, shorter than the " + std::to_string(read.read_bytes) + " bytes the run had read");
  // The CLI: exit 2 with the same message.
  write_file_atomic(train, changed);
  const auto cli = test::run_app("qlora-train", cfg);
  EXPECT_EQ(cli.exit_code, 2) << cli.output;
  EXPECT_CONTAINS(cli.output, "data file " + train.string() + " changed");

  // --force-resume: a warning, and the run goes on from the file as it is now, which later resumes compare with.
  TrainerOptions force;
  force.force_resume = true;
  {
    LogCapture log;
    const TrainSummary s = run_training(load_config(cfg), force);
    EXPECT_EQ(s.start_step, 2);
    EXPECT_EQ(s.steps, 3);
    EXPECT_CONTAINS(log.text(), "data file " + train.string() + " changed");
    EXPECT_CONTAINS(log.text(), "(resuming anyway: --force-resume)");
  }
  const TrainerState st = read_trainer_state(dir / "ckpt" / "checkpoint-3");
  ASSERT_TRUE(st.data_files.has_value());
  const DataFileRead now = st.data_files->at(0);
  EXPECT_EQ(now.fnv1a64, fnv1a64(std::string_view(changed).substr(0, static_cast<size_t>(now.read_bytes))));
  EXPECT_NO_THROW(run_training(load_config(cfg), {}));  // the finished run, started again: no refusal
}

TEST_F(ResumeChecks, RecordsAppendedAfterWhatWasReadResume) {
  const fs::path dir = test::temp_dir();
  const std::string cfg = run_two_of_three_steps(dir);
  const fs::path train = dir / "train.jsonl";
  const DataFileRead read = expect_data_record(dir / "ckpt" / "checkpoint-2", train);
  // Edit the last record (not read yet) and append two more.
  std::string bytes = read_file(train);
  const size_t last = bytes.rfind("Say 23.");
  ASSERT_GT(static_cast<int64_t>(last), read.read_bytes);
  bytes.replace(last, 7, "Say 42.");
  bytes += R"({"instruction": "Say 24.", "input": "", "output": "Number 168."})"
           "\n"
           R"({"instruction": "Say 25.", "input": "", "output": "Number 175."})"
           "\n";
  write_file_atomic(train, bytes);
  const TrainSummary s = run_training(load_config(cfg), {});
  EXPECT_EQ(s.start_step, 2);
  EXPECT_EQ(s.steps, 3);
  const TrainerState st = read_trainer_state(dir / "ckpt" / "checkpoint-3");
  ASSERT_TRUE(st.data_files.has_value());
  EXPECT_EQ(st.data_files->at(0).size, static_cast<int64_t>(bytes.size()));
  EXPECT_GE(st.data_files->at(0).read_bytes, read.read_bytes);
}

// A checkpoint written before data files were recorded (no "data_files"): resumes, saying the data is not checked.
TEST_F(ResumeChecks, ACheckpointWithoutDataFilesResumesUnchecked) {
  const fs::path dir = test::temp_dir();
  const std::string cfg = run_two_of_three_steps(dir);
  const fs::path ck2 = dir / "ckpt" / "checkpoint-2";
  nlohmann::json j = read_json_file(ck2 / kTrainerStateFile);
  j.erase("data_files");
  j.erase("run_id");
  j.erase("lineage");
  write_file_atomic(ck2 / kTrainerStateFile, j.dump(2));
  write_manifest(ck2);
  LogCapture log(spdlog::level::info);
  const TrainSummary s = run_training(load_config(cfg), {});
  EXPECT_EQ(s.start_step, 2);
  EXPECT_CONTAINS(log.text(), ck2.string() + ": written before checkpoints recorded the data files read");
  // Its successor records both again; the old checkpoint is the nameless first segment of the lineage.
  const TrainerState st = read_trainer_state(dir / "ckpt" / "checkpoint-3");
  EXPECT_TRUE(st.data_files.has_value());
  ASSERT_EQ(st.lineage.segments.size(), 2u);
  EXPECT_EQ(st.lineage.segments[0].id, "");
  EXPECT_EQ(st.lineage.segments[1].from_step, 2);
}

// The issue's case: a run resumed from checkpoint-3 of a run that had reached checkpoint-8, with keep: 2. It deletes
// its own older checkpoints (1..4) and leaves the earlier branch's 7 and 8 as they were.
TEST_F(ResumeChecks, AResumedBranchPrunesOnlyItsOwnLineage) {
  const fs::path dir = test::temp_dir();
  run_training(load_config(write_run(dir, 8)), {});
  const fs::path ckpt = dir / "ckpt";
  const std::string manifest7 = read_file(ckpt / "checkpoint-7" / kManifestFile);
  const std::string manifest8 = read_file(ckpt / "checkpoint-8" / kManifestFile);
  const RunLineage first = read_trainer_state(ckpt / "checkpoint-8").lineage;

  const std::string cfg = write_run(dir, 8, (ckpt / "checkpoint-3").string(), /*keep=*/2);
  TrainerOptions stop_at_6;
  stop_at_6.stop_after_steps = 6;
  LogCapture log;
  EXPECT_THROW(run_training(load_config(cfg), stop_at_6), Interrupted);
  EXPECT_EQ(steps_in(ckpt), (std::vector<int64_t>{5, 6, 7, 8}));
  EXPECT_EQ(read_file(ckpt / "checkpoint-7" / kManifestFile), manifest7);
  EXPECT_EQ(read_file(ckpt / "checkpoint-8" / kManifestFile), manifest8);
  // Named once, at the first prune (step 4): the earlier run's 5..8, of which this run then replaced 5 and 6.
  EXPECT_CONTAINS(log.text(), "leaving checkpoint-5, checkpoint-6, checkpoint-7, checkpoint-8 in " + ckpt.string() +
                                  " alone: not of this run's lineage");
  const RunLineage branch = read_trainer_state(ckpt / "checkpoint-6").lineage;
  EXPECT_EQ(branch.run_id, first.run_id);
  ASSERT_EQ(branch.segments.size(), 2u);
  EXPECT_EQ(branch.segments[0].id, first.segments[0].id);
  EXPECT_EQ(branch.segments[1].from_step, 3);
}

}  // namespace
}  // namespace qlora::trainer
