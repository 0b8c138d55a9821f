// safetensors reader/writer, streaming writer, sharded checkpoints, and rejection of malformed files.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace qlora::io {
namespace {

using qlora::test::temp_dir;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

uint64_t read_u64_le(const std::string& b) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(b[i])) << (8 * i);
  return n;
}

std::string u64_le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file as the spec lays it out, with an optional lying header length.
std::string st_file(const std::string& header, const std::string& data, int64_t header_len = -1) {
  return u64_le(header_len < 0 ? header.size() : static_cast<uint64_t>(header_len)) + header + data;
}

std::string raw_bytes(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel() * c.element_size()));
}

// Opening `path` must throw a qlora::Error whose message starts with the path and contains each substring.
void expect_rejected(const fs::path& path, const std::vector<std::string>& substrings) {
  try {
    SafetensorsFile::open(path);
    FAIL() << "opening " << path << " did not throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path.string(), 0), 0u) << "message does not start with the path: " << msg;
    for (const auto& s : substrings) EXPECT_NE(msg.find(s), std::string::npos) << "missing '" << s << "' in: " << msg;
  }
}

// One tensor per safetensors dtype, with values chosen by hand (extremes, signs, fractions).
NamedTensors every_dtype() {
  NamedTensors t;
  t.emplace_back("f32", torch::tensor({1.5f, -2.25f, 3.0e-8f, 65504.0f, -0.0f, 1e30f}).reshape({2, 3}));
  t.emplace_back("f16", torch::tensor({0.5, -1.0, 65504.0, 6.1e-5}).to(torch::kFloat16));
  t.emplace_back("bf16", torch::tensor({1.0, -3.5, 1e38, 0.0078125}).to(torch::kBFloat16).reshape({2, 2}));
  t.emplace_back("f64", torch::tensor({3.141592653589793, -1e300}, torch::kFloat64));
  t.emplace_back("i8", torch::tensor({-128, 127, 0, 5}, torch::kInt8));
  t.emplace_back("u8", torch::tensor({0, 255, 17}, torch::kUInt8));
  t.emplace_back("i16", torch::tensor({-32768, 32767, 3}, torch::kInt16));
  t.emplace_back("i32", torch::tensor({INT32_MIN, INT32_MAX, -7}, torch::kInt32));
  t.emplace_back("i64", torch::tensor({INT64_MIN, INT64_MAX, int64_t{42}}, torch::kInt64));
  t.emplace_back("bool", torch::tensor({true, false, true}, torch::kBool));
  t.emplace_back("scalar", torch::tensor(2.5f));
  t.emplace_back("empty", torch::zeros({0, 4}, torch::kFloat32));
  return t;
}

TEST(Safetensors, RoundTripEveryDtypeByteExact) {
  const fs::path p = temp_dir() / "all.safetensors";
  const NamedTensors tensors = every_dtype();
  save_safetensors(p, tensors);

  // Independent check of the layout: parse the bytes by hand.
  const std::string bytes = slurp(p);
  const uint64_t n = read_u64_le(bytes);
  ASSERT_LE(8 + n, bytes.size());
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  const std::map<std::string, std::string> expected_dtype = {
      {"f32", "F32"}, {"f16", "F16"}, {"bf16", "BF16"}, {"f64", "F64"},   {"i8", "I8"},      {"u8", "U8"},
      {"i16", "I16"}, {"i32", "I32"}, {"i64", "I64"},   {"bool", "BOOL"}, {"scalar", "F32"}, {"empty", "F32"}};
  uint64_t expected_offset = 0;  // written contiguously in the given order
  for (const auto& [name, t] : tensors) {
    const auto& e = header.at(name);
    EXPECT_EQ(e.at("dtype"), expected_dtype.at(name)) << name;
    EXPECT_EQ(e.at("shape").get<std::vector<int64_t>>(), t.sizes().vec()) << name;
    const uint64_t b = e.at("data_offsets")[0], end = e.at("data_offsets")[1];
    EXPECT_EQ(b, expected_offset) << name;
    EXPECT_EQ(bytes.substr(8 + n + b, end - b), raw_bytes(t)) << name;
    expected_offset = end;
  }
  EXPECT_EQ(8 + n + expected_offset, bytes.size());

  auto f = SafetensorsFile::open(p);
  ASSERT_EQ(f->tensors().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    torch::Tensor r = f->get(name);
    EXPECT_EQ(r.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(r.sizes(), t.sizes()) << name;
    EXPECT_EQ(raw_bytes(r), raw_bytes(t)) << name;
    EXPECT_EQ(f->info(name).dtype_name, expected_dtype.at(name));
  }
  EXPECT_EQ(f->metadata().at("format"), "pt");
}

TEST(Safetensors, DtypeNames) {
  EXPECT_EQ(dtype_from_safetensors("BF16"), torch::kBFloat16);
  EXPECT_EQ(dtype_to_safetensors(torch::kUInt8), "U8");
  EXPECT_EQ(dtype_size(torch::kFloat64), 8u);
  EXPECT_THROW(dtype_from_safetensors("F8_E4M3"), Error);
  EXPECT_THROW(dtype_to_safetensors(torch::kComplexFloat), Error);
}

TEST(Safetensors, MetadataRoundTrip) {
  const fs::path p = temp_dir() / "meta.safetensors";
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "héllo \"quoted\""}, {"empty", ""}};
  save_safetensors(p, {{"x", torch::ones({2})}}, meta);
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->metadata(), meta);
}

TEST(Safetensors, HeaderPaddedToMultipleOf8) {
  for (const std::string name : {"a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh"}) {
    const fs::path p = temp_dir() / "pad.safetensors";
    save_safetensors(p, {{name, torch::ones({3}, torch::kFloat64)}});
    const std::string bytes = slurp(p);
    const uint64_t n = read_u64_le(bytes);
    EXPECT_EQ(n % 8, 0u) << name;
    const std::string header = bytes.substr(8, n);
    const size_t last = header.find_last_not_of(' ');
    ASSERT_NE(last, std::string::npos);
    EXPECT_EQ(header[last], '}') << "padding must be spaces after the JSON";
    EXPECT_EQ(bytes.size(), 8 + n + 24);
  }
}

// The view's data pointer lies inside a mapping of the file (from /proc/self/maps) and is not copied.
TEST(Safetensors, GetIsZeroCopyView) {
  const fs::path p = temp_dir() / "view.safetensors";
  save_safetensors(p, {{"a", torch::arange(1000, torch::kFloat32)}, {"b", torch::arange(10, torch::kInt64)}});
  auto f = SafetensorsFile::open(p);
  torch::Tensor a1 = f->get("a"), a2 = f->get("a");
  EXPECT_EQ(a1.data_ptr(), a2.data_ptr());
  const auto addr = reinterpret_cast<uintptr_t>(a1.data_ptr());
  std::ifstream maps("/proc/self/maps");
  std::string line;
  bool found = false;
  while (std::getline(maps, line)) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) != 2) continue;
    if (addr >= lo && addr < hi) {
      found = true;
      EXPECT_NE(line.find(fs::canonical(p).string()), std::string::npos) << line;
    }
  }
  EXPECT_TRUE(found);
  EXPECT_TRUE(torch::equal(a1, torch::arange(1000, torch::kFloat32)));
}

TEST(Safetensors, ViewKeepsFileAliveAfterHandleIsDropped) {
  const fs::path p = temp_dir() / "alive.safetensors";
  save_safetensors(p, {{"a", torch::arange(64, torch::kInt32)}});
  torch::Tensor a;
  {
    auto f = SafetensorsFile::open(p);
    a = f->get("a");
  }
  EXPECT_TRUE(torch::equal(a, torch::arange(64, torch::kInt32)));
}

TEST(Safetensors, ReleaseKeepsFileUsable) {
  const fs::path p = temp_dir() / "release.safetensors";
  const torch::Tensor big = torch::arange(1 << 18, torch::kFloat32);  // 1 MiB, spans many pages
  save_safetensors(p, {{"small", torch::ones({3})}, {"big", big}, {"tail", torch::full({5}, 7.0)}});
  auto f = SafetensorsFile::open(p);
  EXPECT_TRUE(torch::equal(f->get("big"), big));
  f->release("big");
  f->release("small");
  EXPECT_TRUE(torch::equal(f->get("big"), big));  // pages come back from the file
  EXPECT_TRUE(torch::equal(f->get("small"), torch::ones({3})));
  EXPECT_TRUE(torch::equal(f->get("tail"), torch::full({5}, 7.0)));
}

TEST(Safetensors, InfoAndContains) {
  const fs::path p = temp_dir() / "info.safetensors";
  save_safetensors(p, {{"z", torch::ones({2, 3}, torch::kBFloat16)}, {"a", torch::ones({4}, torch::kInt8)}});
  auto f = SafetensorsFile::open(p);
  EXPECT_TRUE(f->contains("z"));
  EXPECT_FALSE(f->contains("nope"));
  EXPECT_EQ(f->info("z").begin, 0u);
  EXPECT_EQ(f->info("z").nbytes(), 12u);
  EXPECT_EQ(f->info("z").numel(), 6);
  EXPECT_EQ(f->info("a").begin, 12u);
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "z");  // sorted by offset
  try {
    f->info("nope");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nope"), std::string::npos);
  }
}

TEST(Safetensors, StreamingWriter) {
  const fs::path dir = temp_dir();
  const fs::path p = dir / "stream.safetensors";
  const torch::Tensor a = torch::randn({3, 5}).to(torch::kBFloat16), b = torch::arange(7, torch::kInt64);
  {
    SafetensorsWriter w(p, {{"a", torch::kBFloat16, {3, 5}}, {"b", torch::kInt64, {7}}});
    w.write("a", a.t().contiguous().t());  // any layout is written row-major
    w.write("b", b);
    w.commit();
  }
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(raw_bytes(f->get("a")), raw_bytes(a));
  EXPECT_TRUE(torch::equal(f->get("b"), b));

  const fs::path q = dir / "aborted.safetensors";
  {
    SafetensorsWriter w(q, {{"a", torch::kFloat32, {2}}, {"b", torch::kFloat32, {2}}});
    EXPECT_THROW(w.write("b", torch::ones({2})), c10::Error);                   // out of order
    EXPECT_THROW(w.write("a", torch::ones({3})), c10::Error);                   // wrong shape
    EXPECT_THROW(w.write("a", torch::ones({2}, torch::kFloat64)), c10::Error);  // wrong dtype
    w.write("a", torch::ones({2}));
  }  // no commit: nothing left behind
  EXPECT_FALSE(fs::exists(q));
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().filename().string(), "stream.safetensors");
}

TEST(Safetensors, ShardedWriterAndCheckpoint) {
  const fs::path dir = temp_dir();
  NamedTensors tensors;
  for (int i = 0; i < 6; ++i) {
    tensors.emplace_back("layer." + std::to_string(i) + ".weight",
                         torch::arange(i * 100, i * 100 + 64, torch::kFloat32).reshape({8, 8}));  // 256 bytes each
  }
  ShardedWriter w(dir, 512);  // two tensors per shard -> 3 shards
  for (const auto& [n, t] : tensors) w.add(n, t);
  w.finish();

  for (const char* f : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                        "model-00003-of-00003.safetensors", "model.safetensors.index.json"}) {
    EXPECT_TRUE(fs::exists(dir / f)) << f;
  }
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 4u) << "no temp files left";
  const auto index = nlohmann::json::parse(slurp(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index.at("metadata").at("total_size"), 6 * 256);
  EXPECT_EQ(index.at("weight_map").at("layer.0.weight"), "model-00001-of-00003.safetensors");
  EXPECT_EQ(index.at("weight_map").at("layer.3.weight"), "model-00002-of-00003.safetensors");
  EXPECT_EQ(index.at("weight_map").at("layer.5.weight"), "model-00003-of-00003.safetensors");

  const Checkpoint ck = Checkpoint::open(dir);
  EXPECT_EQ(ck.shards().size(), 3u);
  EXPECT_EQ(ck.total_bytes(), 6u * 256);
  std::vector<std::string> expected_names;
  for (const auto& [n, t] : tensors) expected_names.push_back(n);
  EXPECT_EQ(ck.names(), expected_names);
  for (const auto& [n, t] : tensors) {
    ASSERT_TRUE(ck.contains(n));
    EXPECT_TRUE(torch::equal(ck.get(n), t)) << n;
    EXPECT_EQ(ck.info(n).shape, (std::vector<int64_t>{8, 8}));
  }
  EXPECT_FALSE(ck.contains("missing"));
  EXPECT_THROW(ck.get("missing"), Error);
}

TEST(Safetensors, ShardedWriterSingleFileWhenItFits) {
  const fs::path dir = temp_dir();
  ShardedWriter w(dir, 1 << 20);
  w.add("a", torch::ones({4}));
  w.add("b", torch::zeros({2}, torch::kBFloat16));
  w.finish();
  EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  const Checkpoint ck = Checkpoint::open(dir);
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(torch::equal(ck.get("a"), torch::ones({4})));
}

TEST(Safetensors, CheckpointIndexWithMissingShard) {
  const fs::path dir = temp_dir();
  save_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", torch::ones({2})}});
  spit(dir / "model.safetensors.index.json",
       R"({"metadata": {"total_size": 16}, "weight_map": {"a": "model-00001-of-00002.safetensors",
          "b": "model-00002-of-00002.safetensors"}})");
  try {
    Checkpoint::open(dir);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model-00002-of-00002.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
  }
}

TEST(Safetensors, CheckpointIndexTensorAbsentFromShard) {
  const fs::path dir = temp_dir();
  save_safetensors(dir / "model-00001-of-00001.safetensors", {{"a", torch::ones({2})}});
  spit(
      dir / "model.safetensors.index.json",
      R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00001.safetensors", "ghost": "model-00001-of-00001.safetensors"}})");
  try {
    Checkpoint::open(dir);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("ghost"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model-00001-of-00001.safetensors"), std::string::npos) << msg;
  }
}

TEST(Safetensors, CheckpointBadIndexAndEmptyFolder) {
  const fs::path dir = temp_dir();
  EXPECT_THROW(Checkpoint::open(dir), Error);  // nothing there
  spit(dir / "model.safetensors.index.json", R"({"metadata": {}, "weight_map": [1, 2]})");
  try {
    Checkpoint::open(dir);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight_map"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Checkpoint::open(dir / "does-not-exist"), Error);
}

// ---- malformed files: each rejected with an error naming the file and the problem ---------------------------

class SafetensorsMalformed : public ::testing::Test {
 protected:
  fs::path write(const std::string& bytes) {
    const fs::path p = temp_dir() / "bad.safetensors";
    spit(p, bytes);
    return p;
  }
};

TEST_F(SafetensorsMalformed, EmptyFile) {
  expect_rejected(write(""), {"empty file"});
}

TEST_F(SafetensorsMalformed, ShorterThanHeaderLength) {
  expect_rejected(write("abcde"), {"truncated", "5 bytes"});
}

TEST_F(SafetensorsMalformed, HeaderLengthBeyondFile) {
  expect_rejected(write(st_file("{}", "", 1000)), {"header length 1000", "beyond the end of the file"});
}

TEST_F(SafetensorsMalformed, HugeHeaderLength) {
  expect_rejected(write(st_file("{}", "", 200ll << 20)), {"header length", "exceeds the limit"});
}

TEST_F(SafetensorsMalformed, BadJson) {
  expect_rejected(write(st_file("{\"a\": {", "")), {"not valid JSON"});
}

TEST_F(SafetensorsMalformed, JsonNotAnObject) {
  expect_rejected(write(st_file("[1, 2]  ", "")), {"not an object"});
}

TEST_F(SafetensorsMalformed, EntryNotAnObject) {
  expect_rejected(write(st_file(R"({"w": 5})", "")), {"tensor 'w'", "not an object"});
}

TEST_F(SafetensorsMalformed, UnknownDtype) {
  expect_rejected(
      write(st_file(R"({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}})", std::string(16, 0))),
      {"tensor 'w'", "dtype 'F128'"});
}

TEST_F(SafetensorsMalformed, MissingDataOffsets) {
  expect_rejected(write(st_file(R"({"w": {"dtype": "F32", "shape": [1]}})", std::string(4, 0))),
                  {"tensor 'w'", "missing data_offsets"});
}

TEST_F(SafetensorsMalformed, DataOffsetsWrongType) {
  expect_rejected(write(st_file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}})", std::string(4, 0))),
                  {"tensor 'w'", "data_offsets must be"});
}

TEST_F(SafetensorsMalformed, ShapeSizeMismatch) {
  expect_rejected(write(st_file(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", std::string(8, 0))),
                  {"tensor 'w'", "size mismatch"});
}

TEST_F(SafetensorsMalformed, OffsetsOutOfRange) {
  expect_rejected(
      write(st_file(
          R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "v": {"dtype": "U8", "shape": [8], "data_offsets": [16, 24]}})",
          std::string(20, 0))),
      {"tensor 'v'", "out of range"});
}

TEST_F(SafetensorsMalformed, OverlappingOffsets) {
  expect_rejected(
      write(st_file(
          R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
          std::string(12, 0))),
      {"tensor 'b'", "overlap", "'a'"});
}

TEST_F(SafetensorsMalformed, HoleBetweenTensors) {
  expect_rejected(
      write(st_file(
          R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
          std::string(12, 0))),
      {"tensor 'b'", "hole"});
}

TEST_F(SafetensorsMalformed, TrailingBytes) {
  expect_rejected(write(st_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", std::string(9, 0))),
                  {"5 trailing bytes"});
}

TEST_F(SafetensorsMalformed, NegativeShape) {
  expect_rejected(
      write(st_file(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", std::string(4, 0))),
      {"tensor 'w'", "negative or non-integer"});
}

TEST_F(SafetensorsMalformed, NonIntegerShape) {
  expect_rejected(
      write(st_file(R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", std::string(4, 0))),
      {"tensor 'w'", "negative or non-integer"});
}

TEST_F(SafetensorsMalformed, ShapeProductOverflows) {
  expect_rejected(
      write(st_file(R"({"w": {"dtype": "F64", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]}})",
                    std::string(8, 0))),
      {"tensor 'w'", "size mismatch"});
}

TEST_F(SafetensorsMalformed, TruncatedDataSection) {
  // A valid file cut short: the last tensor's bytes are missing.
  const fs::path good = temp_dir() / "good.safetensors";
  save_safetensors(good, {{"a", torch::ones({4})}, {"b", torch::ones({16})}});
  const std::string bytes = slurp(good);
  expect_rejected(write(bytes.substr(0, bytes.size() - 10)), {"tensor 'b'", "out of range", "truncated"});
}

TEST_F(SafetensorsMalformed, MetadataNonStringValue) {
  expect_rejected(write(st_file(R"({"__metadata__": {"format": "pt", "step": 5}})", "")),
                  {"__metadata__", "'step'", "not a string"});
}

TEST_F(SafetensorsMalformed, MissingFile) {
  expect_rejected(temp_dir() / "nope.safetensors", {"cannot open"});
}

}  // namespace
}  // namespace qlora::io
