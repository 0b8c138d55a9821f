// Which checkpoints in checkpoint.dir are a run's own (trainer_state.json "run_id" and "lineage"), so that
// `checkpoint.keep` counts and deletes only those.
//
// A fresh start makes a run id; every start of the process, fresh or resumed, opens a segment with an id of its own
// and the step it starts from. A checkpoint records the run id and the segments of the process that wrote it. It is
// of the current run's lineage when the segment that wrote it is one of the run's segments, and its step lies
// between where that segment started and where the next one branched off. So a run resumed from checkpoint-4 of a
// run that had reached checkpoint-10 owns checkpoint-1..4 and what it writes itself; the earlier run's 5..10 are an
// abandoned branch (left alone until this run writes the same step over them), as are another run's checkpoints.
//
// A checkpoint written before lineages were recorded has none: a run resumed from one starts its lineage with a
// nameless segment from step 0, which owns every such checkpoint up to the step it resumed from.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace qlora::trainer {

struct LineageSegment {
  std::string id;         // 16 hex digits ("" for checkpoints written before lineages)
  int64_t from_step = 0;  // the step the segment started (resumed) from
};

struct RunLineage {
  std::string run_id;                    // made at the fresh start, carried through every resume
  std::vector<LineageSegment> segments;  // oldest first; the last is the process that wrote the checkpoint
};

// 16 random hex digits from std::random_device (never the generators training draws from).
std::string new_lineage_id();

// A fresh run: a new run id, one segment from step 0.
RunLineage start_lineage();
// A run resumed at `step` from a checkpoint of lineage `saved`: the same run id and segments, plus a new one.
RunLineage continue_lineage(const RunLineage& saved, int64_t step);

// Whether a checkpoint at `step` written with lineage `checkpoint` is of `run`'s lineage (see the top of the file).
bool in_lineage(const RunLineage& run, const RunLineage& checkpoint, int64_t step);

// "run_id" and "lineage" ([[id, from_step], ...]) into / from a trainer_state.json object; missing keys read as an
// empty lineage (a checkpoint written before them).
void lineage_to_json(const RunLineage& lineage, nlohmann::json& j);
RunLineage lineage_from_json(const nlohmann::json& j);

}  // namespace qlora::trainer
