#include "trainer/run_lineage.h"

#include <cstdio>
#include <limits>
#include <random>

#include "common/json_read.h"

namespace qlora::trainer {

std::string new_lineage_id() {
  std::random_device rd;
  const uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ static_cast<uint64_t>(rd());
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

RunLineage start_lineage() {
  RunLineage l;
  l.run_id = new_lineage_id();
  l.segments.push_back({new_lineage_id(), 0});
  return l;
}

RunLineage continue_lineage(const RunLineage& saved, int64_t step) {
  RunLineage l = saved;
  if (l.segments.empty()) {  // a checkpoint written before lineages: its run is the nameless segment
    l.run_id = new_lineage_id();
    l.segments.push_back({"", 0});
  }
  l.segments.push_back({new_lineage_id(), step});
  return l;
}

bool in_lineage(const RunLineage& run, const RunLineage& checkpoint, int64_t step) {
  const std::string writer = checkpoint.segments.empty() ? std::string() : checkpoint.segments.back().id;
  if (!checkpoint.segments.empty() && checkpoint.run_id != run.run_id) return false;
  for (size_t i = 0; i < run.segments.size(); ++i) {
    if (run.segments[i].id != writer) continue;
    const int64_t end =
        i + 1 < run.segments.size() ? run.segments[i + 1].from_step : std::numeric_limits<int64_t>::max();
    return step >= run.segments[i].from_step && step <= end;
  }
  return false;
}

void lineage_to_json(const RunLineage& lineage, nlohmann::json& j) {
  if (lineage.segments.empty()) return;
  nlohmann::json segments = nlohmann::json::array();
  for (const LineageSegment& s : lineage.segments) segments.push_back({s.id, s.from_step});
  j["run_id"] = lineage.run_id;
  j["lineage"] = segments;
}

RunLineage lineage_from_json(const nlohmann::json& j) {
  RunLineage l;
  if (!j.contains("lineage")) return l;
  l.run_id = j.at("run_id").get<std::string>();
  for (const nlohmann::json& s : j.at("lineage").get_ref<const nlohmann::json::array_t&>()) {
    l.segments.push_back({s.at(0).get<std::string>(), json_int64(s.at(1))});
  }
  return l;
}

}  // namespace qlora::trainer
