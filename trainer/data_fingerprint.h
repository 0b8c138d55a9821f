// The data files in a run's resume fingerprint (trainer_state.json "data_files"): for each file the run has read,
// the longest prefix any of its loaders consumed (the whole file once an epoch went through it, else up to the
// cursor) with its FNV-1a 64, and the file's size when the checkpoint was written. The loaders hash what they read
// as they read it (data/record_source.h), so a save costs a stat per file, not a second pass over the data.
//
// On resume the same prefix of each file is hashed again: a file that is missing, shorter than what was read, or
// whose read bytes differ refuses the resume (check_resume_compatible, trainer/checkpoint.h) naming the file,
// unless --force-resume. Bytes after the read prefix are not covered: appending records to a file, or editing ones
// the run has not reached yet, resumes (and the run goes on to read them). A checkpoint written before this record
// existed (no "data_files") resumes with an info line and no data check.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/record_source.h"

namespace qlora::trainer {

namespace fs = std::filesystem;

struct DataFileRead {
  std::string path;        // as the data loader names it (data_state "files")
  int64_t size = 0;        // the file's size when the checkpoint was written
  int64_t read_bytes = 0;  // the prefix the run had read
  uint64_t fnv1a64 = 0;    // of that prefix
};

nlohmann::json data_files_to_json(const std::vector<DataFileRead>& files);
// A qlora::Error naming `source` for a malformed hash; nlohmann's exceptions for a wrong shape.
std::vector<DataFileRead> data_files_from_json(const nlohmann::json& j, const std::string& source);

// Adds what a loader has read (`files` with their read_digests()) to `into`: per path, the longer prefix wins, the
// loader's at equal length. `size` is taken from the file now. Files read not at all are left out.
void merge_data_reads(std::vector<DataFileRead>& into, const std::vector<fs::path>& files,
                      const std::vector<data::ReadDigest>& read);

// One line per file whose read prefix is no longer what the run read (missing, shorter, other bytes), naming it.
std::vector<std::string> describe_data_file_changes(const std::vector<DataFileRead>& saved);

// The same prefixes re-read from the files as they are now (the record carried on after --force-resume accepted a
// change, so that later resumes compare with what this run goes on from); a missing or shorter file is left out.
std::vector<DataFileRead> redigest_data_files(const std::vector<DataFileRead>& saved);

}  // namespace qlora::trainer
