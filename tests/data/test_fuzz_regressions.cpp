// Inputs the fuzz targets (fuzz/fuzz_jinja.cpp, fuzz_tokenizer_config, fuzz_records, fuzz_chat_records) found to
// crash a data reader, kept as regression tests: each is now a clean qlora::Error. The crashing inputs themselves are
// in tests/fixtures/fuzz_regressions/<target>/ (replayed by ctest fuzz_smoke_<target> too); the references are
// jinja2's own behaviour on the same template (noted per test).
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <iterator>
#include <string>

#include "common/json_read.h"
#include "data/data_config.h"
#include "data/data_loader.h"
#include "data/jinja.h"
#include "data/jinja_impl.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace qlora::data {
namespace {

std::string read_regression(const std::string& target, const std::string& name) {
  std::ifstream in(test::fixtures_dir() / "fuzz_regressions" / target / name, std::ios::binary);
  EXPECT_TRUE(in) << name;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string render_error(const std::string& source, const nlohmann::ordered_json& ctx = {{"messages", {}}}) {
  try {
    JinjaTemplate(source, "fuzz.jinja").render(ctx);
  } catch (const JinjaError& e) {
    return e.what();
  }
  return "(no error)";
}

// fuzz_jinja, 2026-12-03: a namespace assigned into itself, then printed, recursed in repr() until the stack
// overflowed. jinja2 prints "<Namespace {'x': <Namespace {...}>}>"; we refuse it with a located error instead (the
// interpreter's contract: an error, never a crash or a silently different output).
TEST(FuzzRegressions, NamespaceThatContainsItselfIsAnErrorNotAStackOverflow) {
  const std::string e = render_error(read_regression("jinja", "namespace_cycle_min.jinja"));
  EXPECT_NE(e.find("fuzz.jinja:1: a value nested deeper than 512 levels"), std::string::npos) << e;
  // The input as the fuzzer found it (a mangled features.jinja seed) fails the same way, or earlier: never a crash.
  EXPECT_NE(render_error(read_regression("jinja", "namespace_cycle_repr.jinja"), nlohmann::ordered_json::parse(R"(
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}], "tools": []})")),
            "(no error)");
}

// The same bound for the other recursive walks and for deep values made by a loop (jinja2: RecursionError once the
// nesting passes Python's recursion limit).
TEST(FuzzRegressions, DeeplyWrappedValuesAreAnErrorInEveryWalk) {
  const std::string wrap =
      "{% set ns = namespace(x=none) %}{% for i in range(600) %}{% set ns.x = [ns.x] %}{% endfor %}";
  for (const char* use : {"{{ ns.x }}", "{{ ns.x|tojson }}", "{{ ns.x == ns.x }}", "{{ ns.x < ns.x }}"}) {
    const std::string e = render_error(wrap + use);
    EXPECT_NE(e.find("nested deeper than 512 levels"), std::string::npos) << use << ": " << e;
  }
  // Below the bound they work as in Python.
  EXPECT_EQ(JinjaTemplate("{% set ns = namespace(x=1) %}{% for i in range(3) %}{% set ns.x = [ns.x] %}{% endfor %}"
                          "{{ ns.x }}{{ ns.x|tojson }}{{ ns.x == ns.x }}",
                          "t")
                .render(nlohmann::ordered_json::object()),
            "[[[1]]][[[1]]]True");
}

// A million-deep value (loops within the default limits) that is never walked is still freed without a stack
// overflow.
TEST(FuzzRegressions, MillionDeepValueIsFreedWithoutStackOverflow) {
  EXPECT_EQ(JinjaTemplate("{% set ns = namespace(x=none) %}{% for i in range(999) %}{% for j in range(999) %}"
                          "{% set ns.x = [ns.x] %}{% endfor %}{% endfor %}ok",
                          "t")
                .render(nlohmann::ordered_json::object()),
            "ok");
}

// fuzz_jinja, 2026-12-03: an integer index literal past int64 (`'a,b'.77777777777777777777`) let std::out_of_range
// escape the parser (jinja2 accepts it: Python ints are unbounded; we refuse it with a located error).
TEST(FuzzRegressions, HugeIntegerIndexIsAnError) {
  const std::string e = render_error("{{ 'a,b'.77777777777777777777 }}");
  EXPECT_NE(e.find("fuzz.jinja:1: template syntax error: integer index .77777777777777777777 is out of range"),
            std::string::npos)
      << e;
  EXPECT_NE(render_error(read_regression("jinja", "huge_int_index.jinja")), "(no error)");
}

// fuzz_trainer_state, 2026-12-03: a checkpoint's data cursor whose row being packed had ids, labels and lengths that
// disagree was restored as it was, and the next batch wrote past the end of the collation buffers (ASan
// heap-buffer-overflow in collate_packed). restore() now refuses it. The cursor is the one of the fuzz target's
// fixed loader (fuzz/fuzz_trainer_state.cpp): fuzz/data/train.jsonl, alpaca, max_seq_len 64, packing, batch 2,
// "@TRAIN@" standing for the data file's path.
TEST(FuzzRegressions, CursorWithInconsistentPackedRowIsRefused) {
  const fs::path dir = test::temp_dir();
  fs::copy_file(test::source_dir() / "fuzz" / "data" / "train.jsonl", dir / "train.jsonl");
  const auto tok = tokenizer::load_sentencepiece_tokenizer(test::fixtures_dir() / "spm" / "llama_like.model");
  const DataConfig cfg =
      parse_data_config(YAML::Load("train: " + (dir / "train.jsonl").string() +
                                   "\nformat: alpaca\nmax_seq_len: 64\npacking: true\nshuffle_buffer: 16\n"),
                        "cfg.yaml");
  nlohmann::json state =
      parse_json(read_regression("trainer_state", "pending_row_mismatch.json"), "trainer_state.json").at("data_state");
  for (auto& f : state.at("files")) {
    if (f == "@TRAIN@") f = (dir / "train.jsonl").string();
  }
  DataLoader loader(cfg, *tok, Split::kTrain, /*micro_batch_size=*/2, /*seed=*/7, /*max_epochs=*/0);
  const std::string e = test::error_of([&] { loader.restore(state); });
  EXPECT_NE(e.find("data cursor: the row being packed is inconsistent"), std::string::npos) << e;
}

}  // namespace
}  // namespace qlora::data
