#include "trainer/checkpoint.h"

#include <ATen/Context.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <regex>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/json_read.h"
#include "lora/peft_io.h"
#include "trainer/checkpoint_manifest.h"
#include "trainer/config.h"

namespace qlora::trainer {

namespace {

const std::regex& checkpoint_name_re() {
  static const std::regex re(R"(checkpoint-(\d+))");
  return re;
}
// checkpoint-<step>.tmp-<pid> (being written, or the old one after an exchange) and checkpoint-<step>.old-<pid> (the
// old one moved aside where the filesystem cannot exchange).
const std::regex& leftover_name_re() {
  static const std::regex re(R"(checkpoint-(\d+)\.(tmp|old)-(\d+))");
  return re;
}

fs::path sibling(const fs::path& path, const std::string& suffix) {
  return path.parent_path() / (path.filename().string() + suffix);
}

std::string errno_text() {
  return std::strerror(errno);
}

// fsync every file of `dir`, then `dir` itself, so that renaming it into place publishes only durable contents.
void fsync_tree(const fs::path& dir) {
  auto sync = [](const fs::path& p) {
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw_file_error(p.string(), "cannot open to fsync: " + errno_text());
    const int rc = ::fsync(fd);
    ::close(fd);
    if (rc != 0) throw_file_error(p.string(), "fsync failed: " + errno_text());
  };
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file()) sync(e.path());
  }
  sync(dir);
}

// The folder a checkpoint is built in: removed again unless keep() is called (an exception, a failed write).
class TempCheckpointDir {
 public:
  explicit TempCheckpointDir(fs::path path) : path_(std::move(path)) {
    std::error_code ec;
    fs::remove_all(path_, ec);  // leftover of a crashed run with the same pid
    if (!fs::create_directory(path_, ec) || ec) {
      throw_file_error(path_.string(), "cannot create directory: " + ec.message());
    }
  }
  ~TempCheckpointDir() {
    std::error_code ec;
    if (!kept_) fs::remove_all(path_, ec);
  }
  TempCheckpointDir(const TempCheckpointDir&) = delete;
  TempCheckpointDir& operator=(const TempCheckpointDir&) = delete;
  const fs::path& path() const { return path_; }
  void keep() { kept_ = true; }

 private:
  fs::path path_;
  bool kept_ = false;
};

bool process_alive(long pid) {
  return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
}

torch::Tensor generator_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

}  // namespace

nlohmann::json trainer_state_to_json(const TrainerState& s) {
  nlohmann::json j = {{"step", s.step},
                      {"total_steps", s.total_steps},
                      {"tokens_seen", s.tokens_seen},
                      {"label_tokens_seen", s.label_tokens_seen},
                      {"nonfinite_in_row", s.nonfinite_in_row},
                      {"nonfinite_total", s.nonfinite_total},
                      {"elapsed_s", s.elapsed_s},
                      {"last_loss", s.last_loss},
                      {"config_hash", s.config_hash},
                      {"trajectory", s.trajectory},
                      {"model_fingerprint", s.model_fingerprint},
                      {"data_state", s.data_state},
                      {"threads", s.threads},
                      {"world_size", s.world_size},
                      {"format", "qlora.cpp trainer_state v1"}};
  if (s.data_files) j["data_files"] = data_files_to_json(*s.data_files);
  lineage_to_json(s.lineage, j);
  if (s.best_step >= 0) {
    j["best"] = {{"eval_loss", s.best_eval_loss}, {"step", s.best_step}, {"evals_since", s.evals_since_best}};
  }
  if (s.stopped_early) j["stopped_early"] = true;
  return j;
}

TrainerState trainer_state_from_json(const nlohmann::json& j, const std::string& source) {
  TrainerState s;
  try {
    s.step = json_int64(j.at("step"));
    s.total_steps = json_int64(j.at("total_steps"));
    s.tokens_seen = json_int64(j.at("tokens_seen"));
    s.label_tokens_seen = json_int64(j.at("label_tokens_seen"));
    s.nonfinite_in_row = json_int64(j.at("nonfinite_in_row"));
    s.nonfinite_total = json_int64(j.at("nonfinite_total"));
    s.elapsed_s = j.at("elapsed_s").get<double>();
    s.last_loss = j.value("last_loss", 0.0);
    s.config_hash = j.at("config_hash").get<std::string>();
    s.trajectory = j.value("trajectory", nlohmann::json::object());
    s.model_fingerprint = j.at("model_fingerprint").get<std::string>();
    if (j.contains("data_files")) s.data_files = data_files_from_json(j.at("data_files"), source);
    s.lineage = lineage_from_json(j);
    s.data_state = j.at("data_state");
    s.threads = j.contains("threads") ? static_cast<int>(json_int64(j.at("threads"))) : 0;
    s.world_size = j.contains("world_size") ? static_cast<int>(json_int64(j.at("world_size"))) : 1;
    if (j.contains("best")) {
      const nlohmann::json& b = j.at("best");
      s.best_eval_loss = b.at("eval_loss").get<double>();
      s.best_step = json_int64(b.at("step"));
      s.evals_since_best = json_int64(b.at("evals_since"));
    }
    s.stopped_early = j.value("stopped_early", false);
  } catch (const nlohmann::json::exception& e) {
    throw_file_error(source, std::string("not a valid trainer state: ") + e.what(),
                     "the checkpoint is damaged; resume from an older one (checkpoint.resume: <path>)");
  }
  return s;
}

TrainerState read_trainer_state(const fs::path& checkpoint_dir) {
  const fs::path file = checkpoint_dir / kTrainerStateFile;
  return trainer_state_from_json(read_json_file(file), file.string());
}

std::string model_fingerprint(const fs::path& model_dir) {
  uint64_t h = fnv1a64(read_file(model_dir / "config.json"), kRunHashOffset);
  // Weights by name and size (hashing gigabytes at every start would cost minutes); the tokenizer files, which
  // decide every token id and (chat_template) what is trained, by content.
  static const std::set<std::string> kTokenizerFiles = {"tokenizer.model",       "tokenizer.json",
                                                        "tokenizer_config.json", "chat_template.jinja",
                                                        "added_tokens.json",     "special_tokens_map.json"};
  std::vector<std::string> parts;
  for (const auto& e : fs::directory_iterator(model_dir)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file()) continue;
    if (e.path().extension() == ".safetensors") {
      parts.push_back(name + ":" + std::to_string(e.file_size()));
    } else if (kTokenizerFiles.count(name) != 0) {
      char content[17];
      std::snprintf(content, sizeof(content), "%016llx", static_cast<unsigned long long>(fnv1a64(read_file(e.path()))));
      parts.push_back(name + ":" + content);
    }
  }
  std::sort(parts.begin(), parts.end());
  for (const auto& p : parts) h = fnv1a64(p, h);
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

void check_resume_world_size(int saved_world_size, int world_size, const fs::path& checkpoint_dir, bool force) {
  if (saved_world_size == world_size) return;
  const std::string what = checkpoint_dir.string() + ": written by a run of " + std::to_string(saved_world_size) +
                           " process(es); this run has " + std::to_string(world_size) +
                           ", which changes the global batch (micro batch x grad accum x world size)";
  if (force) {
    spdlog::warn("{}; continuing (--force-resume): the data cursor re-shards to the new world size", what);
    return;
  }
  throw Error(what + "\nHINT: launch with " + std::to_string(saved_world_size) +
              " processes (--nproc / WORLD_SIZE), or pass --force-resume to continue with " +
              std::to_string(world_size) + " (the data cursor re-shards exactly; the global batch changes)");
}

void check_resume_compatible(const TrainerState& saved, const std::string& config_hash,
                             const nlohmann::json& trajectory, const std::string& fingerprint,
                             const fs::path& checkpoint_dir, bool force) {
  std::vector<std::string> problems;
  if (saved.config_hash != config_hash) {
    std::string what = "the configuration differs (config hash " + saved.config_hash + " vs " + config_hash + ")";
    const std::string changes = describe_field_changes(saved.trajectory, trajectory);
    if (!changes.empty()) what += ": " + changes;
    problems.push_back(what);
  }
  if (saved.model_fingerprint != fingerprint) {
    problems.push_back("the base model or its tokenizer files differ (fingerprint " + saved.model_fingerprint + " vs " +
                       fingerprint + ")");
  }
  std::vector<std::string> data_changes;
  if (saved.data_files) {
    data_changes = describe_data_file_changes(*saved.data_files);
  } else {
    spdlog::info("{}: written before checkpoints recorded the data files read; the data files are not checked",
                 checkpoint_dir.string());
  }
  problems.insert(problems.end(), data_changes.begin(), data_changes.end());
  if (problems.empty()) return;
  std::string msg = checkpoint_dir.string() + ": cannot resume: ";
  for (size_t i = 0; i < problems.size(); ++i) msg += (i ? "; and " : "") + problems[i];
  if (force) {
    spdlog::warn("{} (resuming anyway: --force-resume)", msg);
    return;
  }
  throw Error(msg + "\nHINT: resume with the original config" +
              (data_changes.empty() ? std::string()
                                    : " and data files as the run read them (records appended after what was read "
                                      "are fine)") +
              ", or start a new run (checkpoint.resume: none with another checkpoint.dir, or --overwrite), or pass "
              "--force-resume to continue from these weights anyway");
}

CheckpointManager::CheckpointManager(fs::path dir, int64_t keep) : dir_(std::move(dir)), keep_(keep) {}

fs::path CheckpointManager::checkpoint_path(const fs::path& dir, int64_t step) {
  return dir / ("checkpoint-" + std::to_string(step));
}

std::vector<std::pair<int64_t, fs::path>> CheckpointManager::list() const {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(dir_, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir_)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || !std::regex_match(name, m, checkpoint_name_re())) continue;
    if (!fs::is_regular_file(e.path() / kTrainerStateFile)) {
      spdlog::warn("ignoring incomplete checkpoint {} (no {})", e.path().string(), kTrainerStateFile);
      continue;
    }
    out.emplace_back(std::stoll(m[1].str()), e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<fs::path> CheckpointManager::latest() const {
  auto all = list();
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

void CheckpointManager::remove_stale_temp_dirs() const {
  std::error_code ec;
  if (!fs::is_directory(dir_, ec)) return;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
  for (const std::string& name : names) {
    std::smatch m;
    if (!std::regex_match(name, m, leftover_name_re())) continue;
    const long pid = std::stol(m[3].str());
    if (pid != static_cast<long>(::getpid()) && process_alive(pid)) continue;  // another live writer
    const fs::path leftover = dir_ / name;
    const fs::path final_path = dir_ / ("checkpoint-" + m[1].str());
    if (m[2].str() == "old" && !fs::exists(final_path)) {
      // The previous checkpoint of this step, moved aside by a replacement that never completed: put it back.
      spdlog::warn("restoring {} from {} (its replacement was interrupted)", final_path.string(), leftover.string());
      fs::rename(leftover, final_path);
      fsync_dir(dir_);
      continue;
    }
    if (m[2].str() == "old" && !fs::is_regular_file(final_path / kTrainerStateFile)) {
      spdlog::warn("keeping {}: {} exists but is incomplete", leftover.string(), final_path.string());
      continue;
    }
    spdlog::info("removing the leftover of an interrupted checkpoint write: {}", leftover.string());
    fs::remove_all(leftover, ec);
  }
}

void CheckpointManager::lock() {
  if (lock_fd_ >= 0) return;
  fs::create_directories(dir_);
  const fs::path file = dir_ / kCheckpointLockFile;
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw_file_error(file.string(), "cannot open the lock file: " + errno_text());
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err != EWOULDBLOCK) throw_file_error(file.string(), std::string("cannot lock: ") + std::strerror(err));
    std::string holder = read_file(file);
    holder.erase(std::remove_if(holder.begin(), holder.end(), [](char c) { return c < '0' || c > '9'; }), holder.end());
    throw_file_error(dir_.string(),
                     "checkpoint.dir is in use by another training run" +
                         (holder.empty() ? std::string() : " (pid " + holder.substr(0, 20) + ")"),
                     "two runs writing one checkpoint.dir would overwrite each other's checkpoints; wait for the "
                     "other run to finish (or stop it), or give this run another checkpoint.dir");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    spdlog::debug("{}: could not record the pid: {}", file.string(), errno_text());  // the lock itself holds
  }
  lock_fd_ = fd;
}

CheckpointManager::~CheckpointManager() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

std::optional<fs::path> CheckpointManager::latest_verified() const {
  const auto all = list();
  if (all.empty()) return std::nullopt;
  std::string first_problem;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    std::string why;
    switch (verify_manifest(it->second, &why)) {
      case ManifestCheck::kVerified:
        return it->second;
      case ManifestCheck::kNoManifest:
        spdlog::warn("{}: no {} (written before checkpoints had one); resuming from it unverified", it->second.string(),
                     kManifestFile);
        return it->second;
      case ManifestCheck::kCorrupt:
        spdlog::warn("{} is damaged ({}); falling back to the next older checkpoint", it->second.string(), why);
        if (first_problem.empty()) first_problem = why;
        break;
    }
  }
  throw_file_error(dir_.string(), "no checkpoint here verifies against its manifest (newest: " + first_problem + ")",
                   "the folder is damaged: restore it from a backup, or start over (checkpoint.resume: none with "
                   "--overwrite)");
}

void CheckpointManager::remove_all_checkpoints() const {
  for (const auto& [step, path] : list()) {
    spdlog::info("--overwrite: removing {}", path.string());
    fs::remove_all(path);
  }
}

fs::path CheckpointManager::save(const TrainerState& state, const CheckpointContents& c,
                                 const CheckpointFileHook& after_file) {
  TORCH_CHECK(c.adapters && c.optimizer, "CheckpointManager::save needs the adapters and the optimizer");
  const fs::path final_path = checkpoint_path(dir_, state.step);
  fs::create_directories(dir_);
  TempCheckpointDir out(sibling(final_path, ".tmp-" + std::to_string(::getpid())));
  auto written = [&](const char* file) {
    if (after_file) after_file(state.step, file);
  };

  lora::SaveAdapterOptions opts;
  opts.base_model_name_or_path = c.base_model;
  opts.dtype = torch::kFloat32;  // exact for fp32 and bf16 adapters, so resuming restores them bitwise
  lora::write_adapter_files(out.path(), *c.adapters, opts);
  written(lora::kAdapterWeightsFile);
  written(lora::kAdapterConfigFile);
  torch::save(*c.optimizer, (out.path() / kOptimizerFile).string());
  written(kOptimizerFile);
  std::vector<torch::Tensor> rng = {generator_state(at::detail::getDefaultCPUGenerator())};
  if (c.cuda_device) rng.push_back(generator_state(at::globalContext().defaultGenerator(*c.cuda_device)));
  torch::save(rng, (out.path() / kRngFile).string());
  written(kRngFile);
  write_file_atomic(out.path() / kEffectiveConfigFile, c.effective_config);
  written(kEffectiveConfigFile);
  write_file_atomic(out.path() / kTrainerStateFile, trainer_state_to_json(state).dump(2) + "\n");
  written(kTrainerStateFile);
  write_manifest(out.path());
  written(kManifestFile);
  fsync_tree(out.path());
  detail::install_checkpoint_dir(out.path(), final_path);
  out.keep();

  prune(state.lineage);  // only now that the new checkpoint is durable
  return final_path;
}

void CheckpointManager::prune(const RunLineage& run) {
  if (keep_ <= 0) return;
  std::vector<fs::path> own;
  std::string newly;  // others not reported yet
  for (const auto& [step, path] : list()) {
    bool mine = false;
    const bool reported = reported_foreign_.count(path.string()) != 0;
    try {
      mine = in_lineage(run, lineage_from_json(read_json_file(path / kTrainerStateFile)), step);
    } catch (const std::exception& e) {  // a damaged trainer_state.json: not counted, not deleted
      if (!reported) spdlog::warn("checkpoint.keep: cannot read the lineage of {}: {}", path.string(), e.what());
    }
    if (mine) {
      own.push_back(path);
    } else if (!reported) {
      reported_foreign_.insert(path.string());
      newly += (newly.empty() ? "" : ", ") + path.filename().string();
    }
  }
  if (!newly.empty()) {
    spdlog::warn(
        "checkpoint.keep: leaving {} in {} alone: not of this run's lineage (an earlier branch past the step this "
        "run resumed from, or another run); they are neither counted nor deleted",
        newly, dir_.string());
  }
  for (size_t i = 0; i + static_cast<size_t>(keep_) < own.size(); ++i) {
    // Renamed to a leftover name first: a deletion cut short is finished by the next start (remove_stale_temp_dirs).
    const fs::path doomed = sibling(own[i], ".tmp-" + std::to_string(::getpid()));
    std::error_code ec;
    fs::remove_all(doomed, ec);
    fs::rename(own[i], doomed, ec);
    if (!ec) fs::remove_all(doomed, ec);
    if (ec) spdlog::warn("could not remove old checkpoint {}: {}", own[i].string(), ec.message());
  }
}

void verify_checkpoint(const fs::path& checkpoint_dir) {
  std::string why;
  switch (verify_manifest(checkpoint_dir, &why)) {
    case ManifestCheck::kVerified:
      return;
    case ManifestCheck::kNoManifest:
      spdlog::warn("{}: no {} (written before checkpoints had one); resuming from it unverified",
                   checkpoint_dir.string(), kManifestFile);
      return;
    case ManifestCheck::kCorrupt:
      throw_file_error(checkpoint_dir.string(), "the checkpoint is damaged: " + why,
                       "resume from another checkpoint (checkpoint.resume: auto takes the newest that verifies)");
  }
}

namespace detail {

void install_checkpoint_dir(const fs::path& tmp, const fs::path& final_path, bool exchange) {
  // A crash between the fallback's two renames leaves the old checkpoint as <final>.old-<pid>, which the next start
  // puts back (remove_stale_temp_dirs).
  install_dir(tmp, final_path, exchange);
}

}  // namespace detail

void load_adapter_weights(const fs::path& checkpoint_dir, const lora::LoraAdapters& adapters) {
  const lora::AdapterFile file = lora::load_adapter(checkpoint_dir);
  if (file.modules.size() != adapters.modules.size()) {
    throw_file_error(checkpoint_dir.string(),
                     "the checkpoint holds " + std::to_string(file.modules.size()) + " adapted modules, the run has " +
                         std::to_string(adapters.modules.size()),
                     "resume with the lora settings the checkpoint was written with");
  }
  for (const auto& m : file.modules) {
    auto target = adapters.find(m.module);
    if (!target) {
      throw_file_error(checkpoint_dir.string(), "adapter module " + m.module + " is not adapted in this run");
    }
    if (m.a.sizes() != target->lora_A().sizes() || m.b.sizes() != target->lora_B().sizes()) {
      throw_file_error(checkpoint_dir.string(), "adapter module " + m.module + " has other ranks/shapes than this run");
    }
    target->set_weights(m.a, m.b);
  }
}

void load_optimizer_state(const fs::path& checkpoint_dir, torch::optim::Optimizer& optimizer) {
  const fs::path file = checkpoint_dir / kOptimizerFile;
  if (!fs::is_regular_file(file)) throw_file_error(file.string(), "missing optimizer state");
  try {
    torch::load(optimizer, file.string());
  } catch (const c10::Error& e) {
    throw_file_error(file.string(), std::string("cannot read optimizer state: ") + e.what_without_backtrace());
  }
}

void load_rng_state(const fs::path& checkpoint_dir, std::optional<torch::Device> cuda_device) {
  const fs::path file = checkpoint_dir / kRngFile;
  std::vector<torch::Tensor> rng;
  try {
    torch::load(rng, file.string());
  } catch (const c10::Error& e) {
    throw_file_error(file.string(), std::string("cannot read RNG state: ") + e.what_without_backtrace());
  }
  if (rng.empty()) throw_file_error(file.string(), "empty RNG state");
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng[0]);
  }
  if (cuda_device && rng.size() > 1) {
    auto gen = at::globalContext().defaultGenerator(*cuda_device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng[1]);
  }
}

}  // namespace qlora::trainer
