// Checkpoints that can never be lost (issue #20), below the training loop: CRC32C against the published check
// values (the CRC catalogue's "123456789" and RFC 3720's iSCSI vectors), manifests that catch a flipped byte in
// any file, replacement by exchange, leftovers put back or removed, and one run per checkpoint.dir (flock).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/checkpoint_manifest.h"

namespace qlora::trainer {
namespace {

using test::error_of;

// ---- CRC32C ----

TEST(Crc32c, PublishedCheckValues) {
  const std::string check = "123456789";
  std::vector<unsigned char> zeros(32, 0x00), ones(32, 0xFF), up(32), down(32);
  for (int i = 0; i < 32; ++i) up[i] = static_cast<unsigned char>(i), down[i] = static_cast<unsigned char>(31 - i);
  for (const auto& f : {&crc32c, &detail::crc32c_ref}) {
    EXPECT_EQ(f(check.data(), check.size(), 0), 0xE3069283u);  // CRC-32C/ISCSI "check" in the CRC catalogue
    EXPECT_EQ(f(zeros.data(), 32, 0), 0x8A9136AAu);            // RFC 3720 B.4
    EXPECT_EQ(f(ones.data(), 32, 0), 0x62A8AB43u);
    EXPECT_EQ(f(up.data(), 32, 0), 0x46DD794Eu);
    EXPECT_EQ(f(down.data(), 32, 0), 0x113FDB5Cu);
    EXPECT_EQ(f(nullptr, 0, 0), 0u);
  }
}

TEST(Crc32c, FastPathMatchesTheTableOnAwkwardSizesAndChains) {
  std::mt19937 rng(20);
  std::vector<unsigned char> buf(4099);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t n : {1u, 3u, 7u, 8u, 9u, 15u, 63u, 1000u, 4099u}) {
    EXPECT_EQ(crc32c(buf.data(), n), detail::crc32c_ref(buf.data(), n)) << n;
  }
  for (size_t cut : {0u, 1u, 5u, 8u, 2048u, 4099u}) {
    EXPECT_EQ(crc32c(buf.data() + cut, buf.size() - cut, crc32c(buf.data(), cut)), crc32c(buf.data(), buf.size()))
        << cut;
  }
}

// ---- manifests ----

// A folder shaped like a checkpoint: a few files of random bytes (one larger than the digest's read chunk).
fs::path make_checkpoint_like(const fs::path& dir) {
  fs::create_directories(dir);
  std::mt19937 rng(7);
  const std::vector<std::pair<std::string, size_t>> files = {
      {"adapter_model.safetensors", (size_t{1} << 20) + 333}, {"optimizer.pt", 5000}, {kTrainerStateFile, 200}};
  for (const auto& [name, size] : files) {
    std::string bytes(size, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng());
    write_file_atomic(dir / name, bytes);
  }
  return dir;
}

void flip_byte(const fs::path& file, size_t at) {
  std::string bytes = read_file(file);
  ASSERT_LT(at, bytes.size());
  bytes[at] = static_cast<char>(bytes[at] ^ 0x01);
  write_file_atomic(file, bytes);
}

TEST(CheckpointManifest, VerifiesAndCatchesAFlippedByteInEveryFile) {
  const fs::path root = test::temp_dir();
  const fs::path dir = make_checkpoint_like(root / "ck");
  std::string why;
  EXPECT_EQ(verify_manifest(dir, &why), ManifestCheck::kNoManifest);
  write_manifest(dir);
  EXPECT_EQ(verify_manifest(dir, &why), ManifestCheck::kVerified) << why;
  for (const auto& e : fs::directory_iterator(dir)) {
    const fs::path copy = root / "flipped";
    fs::remove_all(copy);
    fs::copy(dir, copy);
    const fs::path f = copy / e.path().filename();
    flip_byte(f, fs::file_size(f) / 2);
    why.clear();
    EXPECT_EQ(verify_manifest(copy, &why), ManifestCheck::kCorrupt) << f;
    // A flip inside manifest.json may land in a checksum digit: then the message names that file instead.
    if (f.filename() != kManifestFile) {
      EXPECT_CONTAINS(why, f.filename().string());
    }
    fs::remove_all(copy);
  }
}

TEST(CheckpointManifest, TruncatedMissingAndUnlistedFiles) {
  const fs::path dir = make_checkpoint_like(test::temp_dir() / "ck");
  write_manifest(dir);
  std::string why;
  fs::resize_file(dir / "optimizer.pt", 4999);
  EXPECT_EQ(verify_manifest(dir, &why), ManifestCheck::kCorrupt);
  EXPECT_CONTAINS(why, "optimizer.pt: 4999 bytes, the manifest says 5000");
  fs::remove(dir / "optimizer.pt");
  EXPECT_EQ(verify_manifest(dir, &why), ManifestCheck::kCorrupt);
  EXPECT_CONTAINS(why, "optimizer.pt: listed in the manifest but missing");
  write_file_atomic(dir / kManifestFile, R"({"format": "qlora.cpp checkpoint manifest v1", "files": {}})");
  EXPECT_EQ(verify_manifest(dir, &why), ManifestCheck::kCorrupt);
  EXPECT_CONTAINS(why, "does not list trainer_state.json");
  write_file_atomic(dir / kManifestFile, std::string(100000, '['));
  EXPECT_EQ(verify_manifest(dir, &why), ManifestCheck::kCorrupt);
  EXPECT_CONTAINS(why, "JSON nested deeper than 64 levels");
}

// ---- replacing a checkpoint folder ----

void expect_install_replaces(bool exchange) {
  const fs::path root = test::temp_dir();
  const fs::path final_path = root / "checkpoint-4", tmp = root / "checkpoint-4.tmp-1";
  fs::create_directories(final_path);
  fs::create_directories(tmp);
  write_file_atomic(final_path / "a", "old");
  write_file_atomic(final_path / "only-old", "x");
  write_file_atomic(tmp / "a", "new");
  detail::install_checkpoint_dir(tmp, final_path, exchange);
  EXPECT_EQ(read_file(final_path / "a"), "new");
  EXPECT_FALSE(fs::exists(final_path / "only-old"));
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(root)) ++entries;
  EXPECT_EQ(entries, 1) << "the old folder was left behind";
  // Into an empty place: a plain rename.
  fs::create_directories(root / "checkpoint-6.tmp-1");
  detail::install_checkpoint_dir(root / "checkpoint-6.tmp-1", root / "checkpoint-6", exchange);
  EXPECT_TRUE(fs::is_directory(root / "checkpoint-6"));
}

TEST(CheckpointInstall, ExchangeReplacesAnExistingCheckpoint) {
  expect_install_replaces(/*exchange=*/true);
}

TEST(CheckpointInstall, MoveAsideFallbackReplacesAnExistingCheckpoint) {
  expect_install_replaces(/*exchange=*/false);
}

// A pid that is certainly not running: a child that has exited and been reaped.
long dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  return pid;
}

TEST(CheckpointInstall, LeftoversArePutBackOrRemovedOnlyWithANewerCompleteOne) {
  const fs::path dir = test::temp_dir();
  const std::string dead = std::to_string(dead_pid()), live = std::to_string(::getppid());
  auto make = [&](const std::string& name, bool complete) {
    fs::create_directories(dir / name);
    write_file_atomic(dir / name / "marker", name);
    if (complete) write_file_atomic(dir / name / kTrainerStateFile, "{}");
  };
  make("checkpoint-2.old-" + dead, true);  // cut between the two renames: checkpoint-2 is gone -> put back
  make("checkpoint-4", true);
  make("checkpoint-4.old-" + dead, true);   // a complete checkpoint-4 exists -> removed
  make("checkpoint-6.tmp-" + dead, false);  // never a committed state -> removed
  make("checkpoint-8.tmp-" + live, false);  // a live writer's -> kept
  CheckpointManager(dir, 0).remove_stale_temp_dirs();
  EXPECT_EQ(read_file(dir / "checkpoint-2" / "marker"), "checkpoint-2.old-" + dead);
  EXPECT_FALSE(fs::exists(dir / ("checkpoint-2.old-" + dead)));
  EXPECT_EQ(read_file(dir / "checkpoint-4" / "marker"), "checkpoint-4");
  EXPECT_FALSE(fs::exists(dir / ("checkpoint-4.old-" + dead)));
  EXPECT_FALSE(fs::exists(dir / ("checkpoint-6.tmp-" + dead)));
  EXPECT_TRUE(fs::exists(dir / ("checkpoint-8.tmp-" + live)));
}

TEST(CheckpointInstall, LatestVerifiedFallsBackPastADamagedCheckpoint) {
  const fs::path dir = test::temp_dir();
  for (const char* name : {"checkpoint-2", "checkpoint-4", "checkpoint-6"}) {
    make_checkpoint_like(dir / name);
    write_manifest(dir / name);
  }
  CheckpointManager m(dir, 0);
  EXPECT_EQ(m.latest_verified(), dir / "checkpoint-6");
  flip_byte(dir / "checkpoint-6" / "optimizer.pt", 10);
  fs::resize_file(dir / "checkpoint-4" / kTrainerStateFile, 10);
  EXPECT_EQ(m.latest_verified(), dir / "checkpoint-2");
  flip_byte(dir / "checkpoint-2" / kManifestFile, 3);
  const std::string msg = error_of([&] { (void)m.latest_verified(); });
  EXPECT_CONTAINS(msg, "no checkpoint here verifies against its manifest");
  EXPECT_CONTAINS(msg, "optimizer.pt: CRC32C");
  // Named explicitly (checkpoint.resume: <path>): an error, no fallback.
  EXPECT_CONTAINS(error_of([&] { verify_checkpoint(dir / "checkpoint-6"); }), "the checkpoint is damaged");
}

TEST(CheckpointManifest, TrainerStateNestedDeepIsAnError) {
  const fs::path dir = test::temp_dir();
  write_file_atomic(dir / kTrainerStateFile,
                    "{\"data_state\": " + std::string(200000, '[') + std::string(200000, ']') + "}");
  const std::string msg = error_of([&] { (void)read_trainer_state(dir); });
  EXPECT_CONTAINS(msg, (dir / kTrainerStateFile).string() + ": JSON nested deeper than 64 levels");
}

// ---- one run per checkpoint.dir ----

TEST(CheckpointLock, ASecondHolderIsRefusedUntilTheFirstLetsGo) {
  const fs::path dir = test::temp_dir() / "ckpt";
  auto first = std::make_unique<CheckpointManager>(dir, 0);
  first->lock();
  CheckpointManager second(dir, 0);
  const std::string msg = error_of([&] { second.lock(); });
  EXPECT_CONTAINS(msg, dir.string() + ": checkpoint.dir is in use by another training run (pid " +
                           std::to_string(::getpid()) + ")");
  EXPECT_CONTAINS(msg, "HINT:");
  first.reset();
  EXPECT_NO_THROW(second.lock());
}

TEST(CheckpointLock, AnotherProcessHoldsItUntilKilled) {
  const fs::path dir = test::temp_dir() / "ckpt";
  const fs::path ready = dir.parent_path() / "ready";
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    CheckpointManager m(dir, 0);
    m.lock();
    write_file_atomic(ready, "1");
    for (;;) ::pause();
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!fs::exists(ready) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(fs::exists(ready));
  CheckpointManager m(dir, 0);
  EXPECT_CONTAINS(error_of([&] { m.lock(); }), "(pid " + std::to_string(child) + ")");
  ::kill(child, SIGKILL);  // kill -9: the kernel drops the lock with the process
  ::waitpid(child, nullptr, 0);
  EXPECT_NO_THROW(m.lock());
}

}  // namespace
}  // namespace qlora::trainer

namespace qlora::trainer {
namespace {

// The resume fingerprint sees a changed tokenizer or chat template (which change every id or what is trained),
// not only config.json and the weight files' sizes.
TEST(ModelFingerprint, CoversTokenizerFilesByContent) {
  const fs::path dir = test::temp_dir();
  write_file_atomic(dir / "config.json", R"({"model_type": "llama"})");
  write_file_atomic(dir / "model.safetensors", std::string(64, 'w'));
  write_file_atomic(dir / "tokenizer.json", R"({"model": {"type": "BPE"}})");
  write_file_atomic(dir / "tokenizer_config.json", R"({"chat_template": "{{ a }}"})");
  const std::string base = model_fingerprint(dir);
  EXPECT_EQ(model_fingerprint(dir), base);
  write_file_atomic(dir / "tokenizer_config.json", R"({"chat_template": "{{ b }}"})");  // same size, new template
  const std::string templ = model_fingerprint(dir);
  EXPECT_NE(templ, base);
  write_file_atomic(dir / "tokenizer.json", R"({"model": {"type": "BPX"}})");
  EXPECT_NE(model_fingerprint(dir), templ);
  write_file_atomic(dir / "chat_template.jinja", "{{ c }}");
  const std::string jinja = model_fingerprint(dir);
  write_file_atomic(dir / "README.md", "not part of the model");
  EXPECT_EQ(model_fingerprint(dir), jinja);
}

}  // namespace
}  // namespace qlora::trainer
