// Sharded Hugging Face checkpoints: io::Checkpoint reads a folder of model-0000K-of-0000N.safetensors shards (with
// model.safetensors.index.json) as one set of tensors; io::ShardedWriter writes one. Single files: safetensors.cpp.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"
#include "io/safetensors.h"

namespace qlora::io {

using json = nlohmann::json;

// ------------------------------------------------------------------------------------------------------------
// Checkpoint

namespace {
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
}  // namespace

Checkpoint Checkpoint::open(const fs::path& dir) {
  Checkpoint ck;
  ck.dir_ = dir;
  if (fs::is_regular_file(dir)) {  // a bare .safetensors file
    ck.dir_ = dir.parent_path();
    ck.shards_.push_back(SafetensorsFile::open(dir));
  } else if (!fs::is_directory(dir)) {
    throw_file_error(dir.string(), "model folder does not exist",
                     "pass a folder with config.json and model.safetensors (or a sharded index)");
  } else if (fs::exists(dir / kIndexFile)) {
    const fs::path index_path = dir / kIndexFile;
    const std::string ip = index_path.string();
    const json index = read_json_file(index_path);
    if (!index.is_object()) throw_file_error(ip, "index is not a JSON object");
    if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
      throw_file_error(ip, "missing or invalid \"weight_map\" (an object mapping tensor names to shard files)");
    }
    const json& wm = index["weight_map"];
    std::map<std::string, size_t> shard_index;  // file name -> position in shards_ (opened in file-name order)
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      if (!it.value().is_string()) {
        throw_file_error(ip, "weight_map entry of '" + it.key() + "' is not a string file name");
      }
      const std::string shard = it.value().get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
        throw_file_error(ip, "weight_map entry of '" + it.key() + "' names an invalid shard file '" + shard + "'");
      }
      if (!shard_index.count(shard) && !fs::exists(dir / shard)) {
        throw_file_error(ip,
                         "shard '" + shard + "' (listed for tensor '" + it.key() + "') is missing from " + dir.string(),
                         "the download is incomplete; fetch every model-*-of-*.safetensors file");
      }
      shard_index[shard] = 0;
    }
    for (auto& [shard, pos] : shard_index) {
      pos = ck.shards_.size();
      ck.shards_.push_back(SafetensorsFile::open(dir / shard));
    }
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      const std::string shard = it.value().get<std::string>();
      const size_t pos = shard_index.at(shard);
      if (!ck.shards_[pos]->contains(it.key())) {
        throw_file_error(
            ip, "tensor '" + it.key() + "' is listed in shard '" + shard + "' but that shard has no such tensor");
      }
      ck.shard_of_[it.key()] = pos;
    }
    for (const auto& f : ck.shards_) {
      for (const auto& t : f->tensors()) {
        if (!ck.shard_of_.count(t.name)) {
          spdlog::warn("{}: tensor '{}' is not in the index; ignored", f->path().string(), t.name);
        }
      }
    }
    return ck;
  } else if (fs::exists(dir / kSingleFile)) {
    ck.shards_.push_back(SafetensorsFile::open(dir / kSingleFile));
  } else {
    std::string hint = "expected model.safetensors or model.safetensors.index.json";
    if (fs::exists(dir / "pytorch_model.bin") || fs::exists(dir / "pytorch_model.bin.index.json")) {
      hint += "; this folder has only PyTorch .bin weights: convert them to safetensors first";
    }
    throw_file_error(dir.string(), "no safetensors weights found", hint);
  }
  for (const auto& t : ck.shards_[0]->tensors()) ck.shard_of_[t.name] = 0;
  return ck;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (size_t s = 0; s < shards_.size(); ++s) {
    for (const auto& t : shards_[s]->tensors()) {
      auto it = shard_of_.find(t.name);
      if (it != shard_of_.end() && it->second == s) out.push_back(t.name);
    }
  }
  return out;
}

bool Checkpoint::contains(const std::string& name) const {
  return shard_of_.count(name) > 0;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = shard_of_.find(name);
  if (it == shard_of_.end()) throw_file_error(dir_.string(), "checkpoint has no tensor named '" + name + "'");
  return shards_[it->second]->info(name);
}

torch::Tensor Checkpoint::get(const std::string& name) const {
  auto it = shard_of_.find(name);
  if (it == shard_of_.end()) throw_file_error(dir_.string(), "checkpoint has no tensor named '" + name + "'");
  return shards_[it->second]->get(name);
}

void Checkpoint::release(const std::string& name) const {
  auto it = shard_of_.find(name);
  if (it != shard_of_.end()) shards_[it->second]->release(name);
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, s] : shard_of_) total += shards_[s]->info(name).nbytes();
  return total;
}

// ------------------------------------------------------------------------------------------------------------
// ShardedWriter

namespace {
std::string shard_number(size_t k) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%05zu", k);
  return buf;
}
}  // namespace

ShardedWriter::ShardedWriter(const fs::path& dir, uint64_t max_shard_bytes, std::string prefix)
    : dir_(dir), max_shard_bytes_(max_shard_bytes), prefix_(std::move(prefix)) {
  TORCH_CHECK(max_shard_bytes_ > 0, "ShardedWriter: max_shard_bytes must be positive");
}

void ShardedWriter::add(const std::string& name, const torch::Tensor& t) {
  const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * dtype_size(t.scalar_type());
  if (!pending_.empty() && pending_bytes_ + nbytes > max_shard_bytes_) flush();
  pending_.emplace_back(name, t);
  pending_bytes_ += nbytes;
  total_bytes_ += nbytes;
}

void ShardedWriter::flush() {
  const fs::path tmp = dir_ / (prefix_ + "-" + shard_number(written_.size() + 1) + ".partial.safetensors");
  save_safetensors(tmp, pending_);
  std::vector<std::string> names;
  for (const auto& [n, t] : pending_) names.push_back(n);
  written_.emplace_back(tmp, std::move(names));
  pending_.clear();
  pending_bytes_ = 0;
}

void ShardedWriter::finish() {
  if (written_.empty()) {
    save_safetensors(dir_ / (prefix_ + ".safetensors"), pending_);
    pending_.clear();
    pending_bytes_ = 0;
    return;
  }
  if (!pending_.empty()) flush();
  const size_t n = written_.size();
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t k = 0; k < n; ++k) {
    const std::string final_name = prefix_ + "-" + shard_number(k + 1) + "-of-" + shard_number(n) + ".safetensors";
    fs::rename(written_[k].first, dir_ / final_name);
    for (const auto& name : written_[k].second) weight_map[name] = final_name;
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total_bytes_}}}, {"weight_map", weight_map}};
  write_file_atomic(dir_ / (prefix_ + ".safetensors.index.json"), index.dump(2) + "\n");
  fsync_dir(dir_);
  written_.clear();
}

}  // namespace qlora::io
