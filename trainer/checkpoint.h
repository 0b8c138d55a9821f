// Training checkpoints: everything needed to continue a run bit for bit.
//
//   <checkpoint.dir>/checkpoint-<step>/
//     adapter_model.safetensors, adapter_config.json   the adapter (PEFT layout, fp32: loadable as-is)
//     optimizer.pt                                     torch::save of the AdamW state (exp_avg, exp_avg_sq, step)
//     rng_state.pt                                     default CPU generator state (LoRA dropout), + CUDA's if used
//     effective_config.yaml                            the run's configuration
//     trainer_state.json                               step counters, schedule, data-loader cursor, config hash,
//                                                      model fingerprint, the data files read (size + FNV-1a of
//                                                      the prefix read: trainer/data_fingerprint.h), run id and
//                                                      lineage (trainer/run_lineage.h)
//     manifest.json                                    size + CRC32C of every file above (written last;
//                                                      trainer/checkpoint_manifest.h), checked before resuming
//
// A checkpoint is built in "checkpoint-<step>.tmp-<pid>" and renamed into place, so a crash or kill -9 at any
// moment leaves only complete checkpoint-<step> directories. Replacing an existing checkpoint-<step> (a run resumed
// from an earlier one reaches the same step again) swaps the two folders in one step (renameat2 RENAME_EXCHANGE), so
// there is never a moment with neither. Leftovers of dead writers are removed on the next start, or put back when
// no complete checkpoint of their step exists. Older checkpoints beyond `keep` are deleted only after the new one
// is in place, and only the run's own: `keep` counts the checkpoints of this run's lineage, and leaves others (an
// abandoned branch past the step this run resumed from, another run's) alone, logging them once. A deletion renames
// the folder to a leftover name first, so one cut short is finished on the next start. `resume: auto` takes the
// newest checkpoint that verifies against its manifest, warning about each newer one that does not. Resuming also
// checks the config hash, the base model's fingerprint and the data files read so far (check_resume_compatible).
// One run at a time holds checkpoint.dir (an flock on <dir>/.lock).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "lora/lora_model.h"
#include "trainer/data_fingerprint.h"
#include "trainer/run_lineage.h"

namespace qlora::trainer {

namespace fs = std::filesystem;

inline constexpr const char* kTrainerStateFile = "trainer_state.json";
inline constexpr const char* kOptimizerFile = "optimizer.pt";
inline constexpr const char* kRngFile = "rng_state.pt";
inline constexpr const char* kEffectiveConfigFile = "effective_config.yaml";
inline constexpr const char* kCheckpointLockFile = ".lock";

// The counters and cursors of a run (trainer_state.json).
struct TrainerState {
  int64_t step = 0;               // optimizer updates done
  int64_t total_steps = 0;        // the run's step budget
  int64_t tokens_seen = 0;        // non-padding tokens fed forward
  int64_t label_tokens_seen = 0;  // tokens that counted in the loss
  int64_t nonfinite_in_row = 0;   // consecutive skipped (non-finite) steps
  int64_t nonfinite_total = 0;
  double elapsed_s = 0.0;  // training wall time so far (all segments of the run)
  double last_loss = 0.0;  // mean loss of the last update
  std::string config_hash;
  nlohmann::json trajectory;  // the fields behind config_hash
  std::string model_fingerprint;
  // What the run had read of each data file; nullopt: a checkpoint written before they were recorded (not checked).
  std::optional<std::vector<DataFileRead>> data_files;
  RunLineage lineage;         // which checkpoints are this run's (empty: a checkpoint written before lineages)
  nlohmann::json data_state;  // DataLoader::state()
  int threads = 0;            // intra-op threads (bitwise resume needs the same count)
  int world_size = 1;         // data-parallel ranks (the global batch is micro x accum x world_size)
  // eval.keep_best / eval.early_stopping_patience: the lowest eval loss so far and its step (best_step < 0: none
  // yet), evaluations since it improved, and whether the run ended on early stopping.
  double best_eval_loss = 0.0;
  int64_t best_step = -1;
  int64_t evals_since_best = 0;
  bool stopped_early = false;
};

nlohmann::json trainer_state_to_json(const TrainerState& s);
TrainerState trainer_state_from_json(const nlohmann::json& j, const std::string& source);
TrainerState read_trainer_state(const fs::path& checkpoint_dir);

// A fingerprint of an HF model folder: config.json contents, the names and sizes of its weight files, and the
// contents of its tokenizer files (tokenizer.model / .json, tokenizer_config.json with the chat template,
// chat_template.jinja, added_tokens.json, special_tokens_map.json).
std::string model_fingerprint(const fs::path& model_dir);

// Refuses (qlora::Error) a checkpoint whose config hash or model fingerprint differs, or one of whose data files
// changed in the part the run had read (describe_data_file_changes), naming what changed, unless `force` (then it
// only warns).
void check_resume_compatible(const TrainerState& saved, const std::string& config_hash,
                             const nlohmann::json& trajectory, const std::string& fingerprint,
                             const fs::path& checkpoint_dir, bool force);

// Refuses (qlora::Error) to resume a checkpoint written with another data-parallel world size, unless `force`:
// then it warns and continues. The data cursor is a position in the one global stream of micro-batches (every
// rank reads all of it and keeps every W-th), so it re-shards exactly to any world size; what changes is the
// global batch (micro x accum x world size) from there on.
void check_resume_world_size(int saved_world_size, int world_size, const fs::path& checkpoint_dir, bool force);

// Called by CheckpointManager::save after each file of checkpoint-<step> is written into the temporary folder
// (`file`: its name, e.g. "optimizer.pt"), in the order of the listing at the top of this file. Tests throw or
// SIGKILL the process from it to prove that a write interrupted there leaves the previous checkpoint usable.
using CheckpointFileHook = std::function<void(int64_t step, const std::string& file)>;

// What a save needs besides the trainer state.
struct CheckpointContents {
  const lora::LoraAdapters* adapters = nullptr;
  torch::optim::Optimizer* optimizer = nullptr;
  std::string effective_config;              // YAML text
  std::string base_model;                    // adapter_config.json base_model_name_or_path
  std::optional<torch::Device> cuda_device;  // also save this device's generator state
};

class CheckpointManager {
 public:
  CheckpointManager(fs::path dir, int64_t keep);
  ~CheckpointManager();
  CheckpointManager(const CheckpointManager&) = delete;
  CheckpointManager& operator=(const CheckpointManager&) = delete;

  // Takes an exclusive lock on the checkpoint folder (flock on <dir>/.lock, created with the folder) for the
  // manager's lifetime; the kernel drops it when the process dies, kill -9 included. Another live holder is a
  // qlora::Error naming its pid.
  void lock();

  const fs::path& dir() const { return dir_; }
  static fs::path checkpoint_path(const fs::path& dir, int64_t step);

  // Complete checkpoints (a trainer_state.json inside), ascending by step.
  std::vector<std::pair<int64_t, fs::path>> list() const;
  std::optional<fs::path> latest() const;
  // The newest checkpoint that verifies against its manifest (one written before manifests is taken as it is, with
  // a warning); each newer one that fails is a warning naming the file and what differs. None at all: nullopt.
  // Checkpoints exist but none verifies: a qlora::Error.
  std::optional<fs::path> latest_verified() const;
  // Removes "checkpoint-*.tmp-<pid>" / ".old-<pid>" leftovers whose writer is no longer running; an ".old-<pid>"
  // (the previous checkpoint of a step, moved aside by a replacement that was cut short) is put back instead when no
  // complete checkpoint of its step exists.
  void remove_stale_temp_dirs() const;
  // Deletes every checkpoint-<step> (fresh start with --overwrite).
  void remove_all_checkpoints() const;

  // Writes checkpoint-<state.step> atomically (replacing one of the same step), then prunes beyond `keep`.
  // `after_file` (tests) is called after each file is written.
  fs::path save(const TrainerState& state, const CheckpointContents& contents,
                const CheckpointFileHook& after_file = {});
  // Deletes the oldest checkpoints of `run`'s lineage beyond the newest `keep` (nothing with keep 0). Checkpoints
  // of other lineages (or whose trainer_state.json cannot be read) are neither counted nor deleted: a warning names
  // each the first time this manager sees it.
  void prune(const RunLineage& run);

 private:
  fs::path dir_;
  int64_t keep_;
  int lock_fd_ = -1;
  std::set<std::string> reported_foreign_;  // checkpoints prune() has already warned about
};

// A clear qlora::Error when `checkpoint_dir` fails its manifest (a checkpoint named by checkpoint.resume: <path>).
void verify_checkpoint(const fs::path& checkpoint_dir);

namespace detail {
// Puts the finished folder `tmp` at `final_path`: a plain rename when nothing is there; else the two are exchanged
// (RENAME_EXCHANGE) and the old one, now at `tmp`, removed. Without `exchange` (or where the filesystem lacks it):
// the old one is renamed to "<final>.old-<pid>" first, which remove_stale_temp_dirs puts back after a crash.
void install_checkpoint_dir(const fs::path& tmp, const fs::path& final_path, bool exchange = true);
}  // namespace detail

// Restores what save() wrote into live objects (the adapters must be attached with the same modules and ranks).
void load_adapter_weights(const fs::path& checkpoint_dir, const lora::LoraAdapters& adapters);
void load_optimizer_state(const fs::path& checkpoint_dir, torch::optim::Optimizer& optimizer);
void load_rng_state(const fs::path& checkpoint_dir, std::optional<torch::Device> cuda_device);

}  // namespace qlora::trainer
