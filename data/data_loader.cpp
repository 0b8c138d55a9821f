#include "data/data_loader.h"

#include <spdlog/spdlog.h>

#include <sstream>

#include "common/error.h"
#include "common/json_read.h"

namespace qlora::data {

namespace {

constexpr int kStateVersion = 1;
constexpr int64_t kMaxWarnings = 10;  // per loader; later ones are only counted
constexpr uint64_t kEvalSalt = 0x9e3779b97f4a7c15ULL;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Deterministic eval/train assignment of a record index for eval_fraction.
bool is_eval_record(int64_t record, double fraction) {
  const uint64_t h = splitmix64(static_cast<uint64_t>(record) ^ kEvalSalt);
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0) < fraction;
}

nlohmann::json pos_to_json(const SourcePos& p) {
  return {p.file, p.offset, p.line, p.record};
}
SourcePos pos_from_json(const nlohmann::json& j) {
  return {json_int64(j.at(0)), json_int64(j.at(1)), json_int64(j.at(2)), json_int64(j.at(3))};
}

std::string list_files(const std::vector<fs::path>& files) {
  std::string s;
  for (size_t i = 0; i < files.size() && i < 5; ++i) s += (i ? ", " : "") + files[i].string();
  if (files.size() > 5) s += ", ... (" + std::to_string(files.size()) + " files)";
  return s;
}

std::vector<fs::path> split_files(const DataConfig& cfg, Split split) {
  if (split == Split::kEval) {
    if (!cfg.eval.empty()) return resolve_data_files(cfg.eval, cfg.base_dir, "data.eval");
    if (cfg.eval_fraction <= 0.0) {
      throw Error("data: no eval split configured\nHINT: set data.eval (a file) or data.eval_fraction (e.g. 0.05)");
    }
  }
  return resolve_data_files(cfg.train, cfg.base_dir, "data.train");
}

}  // namespace

const char* split_name(Split s) {
  return s == Split::kTrain ? "train" : "eval";
}

nlohmann::json DataStats::to_json() const {
  return {{"records_read", records_read},
          {"examples", examples},
          {"tokens", tokens},
          {"label_tokens", label_tokens},
          {"truncated", truncated},
          {"dropped_long", dropped_long},
          {"bad_lines_skipped", bad_lines_skipped},
          {"fully_masked_skipped", fully_masked_skipped},
          {"batches", batches}};
}

DataStats DataStats::from_json(const nlohmann::json& j) {
  DataStats s;
  s.records_read = json_int64(j.at("records_read"));
  s.examples = json_int64(j.at("examples"));
  s.tokens = json_int64(j.at("tokens"));
  s.label_tokens = json_int64(j.at("label_tokens"));
  s.truncated = json_int64(j.at("truncated"));
  s.dropped_long = json_int64(j.at("dropped_long"));
  s.bad_lines_skipped = json_int64(j.at("bad_lines_skipped"));
  s.fully_masked_skipped = json_int64(j.at("fully_masked_skipped"));
  s.batches = json_int64(j.at("batches"));
  return s;
}

DataLoader::DataLoader(const DataConfig& cfg, const tokenizer::Tokenizer& tok, Split split, int64_t micro_batch_size,
                       uint64_t seed, int64_t max_epochs, int rank, int world_size)
    : cfg_(cfg),
      tok_(tok),
      split_(split),
      micro_batch_size_(micro_batch_size),
      seed_(seed),
      max_epochs_(max_epochs),
      rank_(rank),
      world_size_(world_size),
      shuffle_capacity_(split == Split::kTrain ? cfg.shuffle_buffer : 0),
      pad_id_(choose_pad_id(tok)),
      source_(split_files(cfg, split), cfg.max_record_bytes),
      rng_(seed) {
  TORCH_CHECK(micro_batch_size > 0, "DataLoader: micro_batch_size must be > 0, got ", micro_batch_size);
  TORCH_CHECK(max_epochs >= 0, "DataLoader: max_epochs must be >= 0, got ", max_epochs);
  TORCH_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "DataLoader: bad rank ", rank, " of ", world_size);
  if (cfg_.tmpl.kind == TemplateKind::kAuto) setup_chat_template();
  spdlog::info("data ({}): {} as {} with template {}; max_seq_len {}, packing {}, shuffle buffer {}", split_name(split),
               list_files(files()), format_name(cfg.format), template_name(cfg_.tmpl.kind), cfg.max_seq_len,
               cfg.packing ? "on" : "off", shuffle_capacity_);
  if (rank == 0 && split == Split::kTrain) {
    for (const auto& ex : preview(1)) {
      spdlog::info("data: first example ({} tokens, {} trained; masked text in [[...]]):\n{}", ex.size(),
                   ex.num_label_tokens(), format_masked(ex, tok_));
    }
  }
}

bool DataLoader::take_record(int64_t record) const {
  if (cfg_.eval_fraction > 0.0 && cfg_.eval.empty()) {
    if (is_eval_record(record, cfg_.eval_fraction) != (split_ == Split::kEval)) return false;
  }
  return record % world_size_ == rank_;
}

void DataLoader::bad_record(const SourcePos& pos, const std::string& what) {
  const std::string where = source_.where(pos);
  if (cfg_.on_bad_line == BadLinePolicy::kFail) {
    throw Error(where + ": bad " + format_name(cfg_.format) + " record: " + what +
                "\nHINT: fix the line, or set data.on_bad_line: skip to count and skip bad lines");
  }
  stats_.bad_lines_skipped += 1;
  if (warnings_++ < kMaxWarnings) spdlog::warn("{}: skipped bad record: {}", where, what);
  if (stats_.bad_lines_skipped > cfg_.max_bad_lines) {
    throw Error(where + ": more than data.max_bad_lines = " + std::to_string(cfg_.max_bad_lines) +
                " bad records skipped (last: " + what + ")\nHINT: check the data format (data.format: " +
                format_name(cfg_.format) + ") or raise data.max_bad_lines");
  }
}

// data.template: auto: the model's chat template, or chatml when the model has none and the template is the
// default one.
void DataLoader::setup_chat_template() {
  if (cfg_.chat_template && !cfg_.chat_template->empty()) {
    chat_ = std::make_shared<const ChatTemplateRenderer>(*cfg_.chat_template);  // syntax errors: JinjaError
    spdlog::info("data: chat template of the model ({})", cfg_.chat_template->origin);
    return;
  }
  if (!cfg_.tmpl.auto_falls_back) {
    throw Error(
        "data.template: auto needs the model's chat template, but the model folder has none (no "
        "chat_template.jinja, no chat_template in tokenizer_config.json)\nHINT: pick a built-in template (chatml, "
        "llama3, llama2-chat) or a custom one");
  }
  cfg_.tmpl.kind = TemplateKind::kChatml;
}

DataLoader::Processed DataLoader::process(const RawRecord& rec) const {
  Processed out;
  TokenizedExample ex;
  try {
    Record r;
    bool done = false;
    if (rec.too_long) {
      throw BadRecord("longer than data.max_record_bytes = " + std::to_string(cfg_.max_record_bytes) +
                      " bytes (read past, not parsed)");
    }
    if (rec.plain_text) {
      if (cfg_.format != DataFormat::kText) {
        throw BadRecord(std::string(".txt files hold plain text; they need data.format: text, not ") +
                        format_name(cfg_.format));
      }
      r = parse_text_document(rec.text);
    } else if (chat_ && cfg_.format == DataFormat::kChat) {
      ex = tokenize_chat_record(*chat_, rec.text, tok_, cfg_.train_on_prompt, cfg_.fields);  // data.template: auto
      done = true;
    } else {
      std::string why;
      const std::optional<nlohmann::json> j = try_parse_json(rec.text, &why);
      if (!j) throw BadRecord("malformed JSON (" + why + ")");
      r = parse_record(*j, cfg_);
    }
    if (!done) {
      ex = chat_ ? tokenize_chat_messages(*chat_, r.messages, tok_, cfg_.train_on_prompt)
                 : tokenize_segments(render_record(r, cfg_), tok_, cfg_.train_on_prompt);
    }
  } catch (const BadRecord& e) {
    out.outcome = Outcome::kBad;
    out.what = e.what();
    return out;
  }
  out.original_len = ex.size();
  if (ex.num_label_tokens() == 0) {
    out.outcome = Outcome::kBad;
    out.what = "no trained tokens (empty response and add_eos: false?)";
    return out;
  }
  if (ex.size() > cfg_.max_seq_len) {
    if (cfg_.drop_long) {
      out.outcome = Outcome::kDroppedLong;
      return out;
    }
    truncate_example(ex, cfg_.max_seq_len);
    if (ex.num_label_tokens() == 0) {
      out.outcome = Outcome::kFullyMasked;
      return out;
    }
    out.outcome = Outcome::kTruncated;
  }
  out.ex = std::move(ex);
  return out;
}

void DataLoader::account(const SourcePos& pos, const Processed& p) {
  switch (p.outcome) {
    case Outcome::kBad:
      bad_record(pos, p.what);
      return;
    case Outcome::kDroppedLong:
      stats_.dropped_long += 1;
      if (warnings_++ < kMaxWarnings) {
        spdlog::warn("{}: dropped: {} tokens > data.max_seq_len {}", source_.where(pos), p.original_len,
                     cfg_.max_seq_len);
      }
      return;
    case Outcome::kFullyMasked:
      stats_.truncated += 1;
      stats_.fully_masked_skipped += 1;
      if (warnings_++ < kMaxWarnings) {
        spdlog::warn("{}: skipped: the prompt fills data.max_seq_len {} ({} tokens), nothing left to train on",
                     source_.where(pos), cfg_.max_seq_len, p.original_len);
      }
      return;
    case Outcome::kTruncated:
      stats_.truncated += 1;
      break;
    case Outcome::kOk:
      break;
  }
  stats_.examples += 1;
  stats_.tokens += p.ex->size();
  stats_.label_tokens += p.ex->num_label_tokens();
}

std::optional<DataLoader::Buffered> DataLoader::read_example() {
  while (auto rec = source_.next()) {
    if (!take_record(rec->pos.record)) continue;
    stats_.records_read += 1;
    Processed p = process(*rec);
    account(rec->pos, p);
    if (p.ex) {
      epoch_examples_ += 1;
      return Buffered{rec->pos, std::move(*p.ex)};
    }
  }
  return std::nullopt;
}

std::optional<TokenizedExample> DataLoader::next_example() {
  for (;;) {
    if (finished_) return std::nullopt;
    if (!draining_) {
      if (auto b = read_example()) {
        if (shuffle_capacity_ <= 1) return std::move(b->ex);
        if (static_cast<int64_t>(buffer_.size()) < shuffle_capacity_) {
          buffer_.push_back(std::move(*b));
          continue;
        }
        // Emit a random buffered example; the new one takes its place.
        std::swap(buffer_[random_index(buffer_.size())], *b);
        return std::move(b->ex);
      }
      draining_ = true;
    }
    if (!buffer_.empty()) {
      std::swap(buffer_[random_index(buffer_.size())], buffer_.back());
      TokenizedExample ex = std::move(buffer_.back().ex);
      buffer_.pop_back();
      return ex;
    }
    // End of an epoch.
    if (epoch_examples_ == 0) {
      throw Error("data (" + std::string(split_name(split_)) + "): no usable examples in " + list_files(files()) +
                  (world_size_ > 1 ? " for rank " + std::to_string(rank_) : std::string()) + " (" +
                  std::to_string(stats_.bad_lines_skipped) + " bad lines skipped, " +
                  std::to_string(stats_.dropped_long + stats_.fully_masked_skipped) + " too long)" +
                  "\nHINT: check that the file is not empty and matches data.format: " + format_name(cfg_.format));
    }
    epoch_ += 1;
    epoch_examples_ = 0;
    draining_ = false;
    source_.seek(SourcePos{});
    if (max_epochs_ > 0 && epoch_ >= max_epochs_) finished_ = true;
  }
}

std::optional<Batch> DataLoader::next() {
  if (!cfg_.packing) {
    std::vector<TokenizedExample> rows;
    while (static_cast<int64_t>(rows.size()) < micro_batch_size_) {
      auto ex = next_example();
      if (!ex) break;
      rows.push_back(std::move(*ex));
    }
    if (rows.empty()) return std::nullopt;
    stats_.batches += 1;
    return collate_padded(rows, pad_id_, cfg_.pad_to_max_seq_len ? cfg_.max_seq_len : 0);
  }
  std::vector<PackedRow> rows;
  while (static_cast<int64_t>(rows.size()) < micro_batch_size_) {
    auto ex = next_example();
    if (!ex) {
      if (!pending_.empty()) rows.push_back(std::move(pending_));
      pending_ = PackedRow{};
      break;
    }
    if (!pending_.empty() && pending_.size() + ex->size() > cfg_.max_seq_len) {
      rows.push_back(std::move(pending_));
      pending_ = PackedRow{};
    }
    pending_.append(*ex);
  }
  if (rows.empty()) return std::nullopt;
  stats_.batches += 1;
  return collate_packed(rows, pad_id_, cfg_.max_seq_len);
}

std::vector<TokenizedExample> DataLoader::preview(int64_t n) const {
  std::vector<TokenizedExample> out;
  RecordSource src(source_.files(), cfg_.max_record_bytes);
  while (static_cast<int64_t>(out.size()) < n) {
    auto rec = src.next();
    if (!rec) break;
    if (!take_record(rec->pos.record)) continue;
    Processed p = process(*rec);
    if (p.ex) out.push_back(std::move(*p.ex));
  }
  return out;
}

nlohmann::json DataLoader::state() const {
  std::ostringstream rng;
  rng << rng_;
  nlohmann::json buffer = nlohmann::json::array();
  for (const auto& b : buffer_) buffer.push_back(pos_to_json(b.pos));
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : source_.files()) files.push_back(f.string());
  return {{"version", kStateVersion},
          {"split", split_name(split_)},
          {"rank", rank_},
          {"world_size", world_size_},
          {"micro_batch_size", micro_batch_size_},
          {"files", files},
          {"epoch", epoch_},
          {"epoch_examples", epoch_examples_},
          {"draining", draining_},
          {"finished", finished_},
          {"source", pos_to_json(source_.position())},
          {"buffer", buffer},
          {"rng", rng.str()},
          {"pending", {{"ids", pending_.ids}, {"labels", pending_.labels}, {"lengths", pending_.lengths}}},
          {"stats", stats_.to_json()}};
}

// The row being packed, as a cursor saved it: what collation indexes by must agree (lengths summing to the ids, one
// label per id, a row no longer than max_seq_len, ids in the vocabulary), or a damaged cursor writes out of bounds.
void DataLoader::check_pending_row(const PackedRow& p) const {
  int64_t total = 0;
  bool ok = p.ids.size() == p.labels.size();
  for (const int64_t n : p.lengths) {
    ok = ok && n > 0 && n <= cfg_.max_seq_len;
    total += ok ? n : 0;
  }
  ok = ok && total == static_cast<int64_t>(p.ids.size()) && total <= cfg_.max_seq_len;
  for (size_t i = 0; ok && i < p.ids.size(); ++i) {
    ok = p.ids[i] >= 0 && p.ids[i] < tok_.vocab_size() &&
         (p.labels[i] == kIgnoreIndex || (p.labels[i] >= 0 && p.labels[i] < tok_.vocab_size()));
  }
  if (!ok) {
    throw Error(
        "data cursor: the row being packed is inconsistent (ids, labels and lengths disagree, or a token id "
        "is outside the vocabulary)\nHINT: the checkpoint's data state is damaged; resume from an older "
        "checkpoint");
  }
}

void DataLoader::restore(const nlohmann::json& s) {
  const auto mismatch = [](const std::string& what, const std::string& saved, const std::string& now) {
    throw Error("data cursor: saved for " + what + " " + saved + ", but this run has " + now +
                "\nHINT: resume with the same data files, split, micro batch size and world size, or start the data "
                "stream afresh");
  };
  try {
    if (json_int64(s.at("version")) != kStateVersion) {
      mismatch("version", json_excerpt(s.at("version")), std::to_string(kStateVersion));
    }
    if (s.at("split").get<std::string>() != split_name(split_))
      mismatch("split", s.at("split").get<std::string>(), split_name(split_));
    if (json_int64(s.at("rank")) != rank_ || json_int64(s.at("world_size")) != world_size_) {
      mismatch("rank/world size", json_excerpt(s.at("rank")) + "/" + json_excerpt(s.at("world_size")),
               std::to_string(rank_) + "/" + std::to_string(world_size_));
    }
    if (json_int64(s.at("micro_batch_size")) != micro_batch_size_) {
      mismatch("micro batch size", json_excerpt(s.at("micro_batch_size")), std::to_string(micro_batch_size_));
    }
    std::vector<std::string> files;
    for (const auto& f : source_.files()) files.push_back(f.string());
    if (s.at("files").get<std::vector<std::string>>() != files)
      mismatch("files", json_excerpt(s.at("files"), 400), nlohmann::json(files).dump());

    std::istringstream rng(s.at("rng").get<std::string>());
    std::mt19937_64 new_rng;
    rng >> new_rng;
    if (rng.fail()) throw Error("data cursor: corrupt RNG state");

    std::vector<Buffered> buffer;
    for (const auto& jp : s.at("buffer")) {
      const SourcePos pos = pos_from_json(jp);
      Processed p = process(source_.read_at(pos));
      if (!p.ex) {
        throw_file_error(source_.where(pos), "data cursor: the buffered record is no longer a valid example",
                         "the data file changed since the cursor was saved");
      }
      buffer.push_back({pos, std::move(*p.ex)});
    }
    PackedRow pending;
    pending.ids = s.at("pending").at("ids").get<std::vector<int32_t>>();
    pending.labels = s.at("pending").at("labels").get<std::vector<int32_t>>();
    pending.lengths = s.at("pending").at("lengths").get<std::vector<int64_t>>();
    check_pending_row(pending);

    rng_ = new_rng;
    buffer_ = std::move(buffer);
    pending_ = std::move(pending);
    epoch_ = json_int64(s.at("epoch"));
    epoch_examples_ = json_int64(s.at("epoch_examples"));
    draining_ = s.at("draining").get<bool>();
    finished_ = s.at("finished").get<bool>();
    stats_ = DataStats::from_json(s.at("stats"));
    source_.seek(pos_from_json(s.at("source")));
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("data cursor: malformed state (") + e.what() +
                ")\nHINT: the checkpoint's data state is damaged");
  }
}

void DataLoader::reset() {
  rng_.seed(seed_);
  buffer_.clear();
  pending_ = PackedRow{};
  draining_ = false;
  finished_ = false;
  epoch_ = 0;
  epoch_examples_ = 0;
  stats_ = DataStats{};
  warnings_ = 0;
  source_.seek(SourcePos{});
}

}  // namespace qlora::data
