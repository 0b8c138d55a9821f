// Hostile model files (issue #20): JSON nested deep in a safetensors header, a sharded index or a bitsandbytes
// quant state, and oversized values in error paths, are each a qlora::Error naming the file, never a crash.
#include <gtest/gtest.h>

#include <string>

#include "common/atomic_file.h"
#include "common/error.h"
#include "io/bnb_format.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace qlora::io {
namespace {

using test::error_of;

constexpr size_t kHostileDepth = 200000;

std::string deep_json() {
  return "{\"a\":" + std::string(kHostileDepth, '[') + std::string(kHostileDepth, ']') + "}";
}

// A safetensors file laid out by the spec: 8-byte little-endian header length, header, data.
std::string st_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}

TEST(HostileSafetensors, HeaderNestedDeepIsAnError) {
  const fs::path p = test::temp_dir() / "deep.safetensors";
  write_file_atomic(p, st_file(deep_json(), ""));
  const std::string msg = error_of([&] { SafetensorsFile::open(p); });
  EXPECT_CONTAINS(msg, p.string() + ": header: JSON nested deeper than 64 levels");
}

TEST(HostileSafetensors, ErrorsQuoteAnExcerptOfALongShape) {
  std::string shape = "[";
  for (int i = 0; i < 100000; ++i) shape.append("1,");
  shape.append("-1]");
  const fs::path p = test::temp_dir() / "long_shape.safetensors";
  write_file_atomic(
      p, st_file(R"({"w":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,4]}})", std::string(4, '\x01')));
  const std::string msg = error_of([&] { SafetensorsFile::open(p); });
  EXPECT_CONTAINS(msg, "shape [1,1,1,");
  EXPECT_CONTAINS(msg, "has a negative or non-integer dimension");
  EXPECT_LT(msg.size(), 1000u);
}

TEST(HostileSafetensors, ShardIndexNestedDeepIsAnError) {
  const fs::path dir = test::temp_dir();
  write_file_atomic(dir / "model.safetensors.index.json", deep_json());
  const std::string msg = error_of([&] { Checkpoint::open(dir); });
  EXPECT_CONTAINS(msg, (dir / "model.safetensors.index.json").string() + ": JSON nested deeper than 64 levels");
}

TEST(HostileBnb, QuantStateNestedDeepIsAnError) {
  const fs::path dir = test::temp_dir();
  const std::string state = deep_json();
  const torch::Tensor bytes =
      torch::from_blob(const_cast<char*>(state.data()), {int64_t(state.size())}, torch::kUInt8).clone();
  save_safetensors(dir / "model.safetensors", {{"w.weight", torch::full({8, 1}, 17, torch::kUInt8)},
                                               {"w.weight.quant_state.bitsandbytes__nf4", bytes}});
  const Checkpoint ckpt = Checkpoint::open(dir);
  const std::string msg = error_of([&] { bnb_read(ckpt, "w"); });
  EXPECT_CONTAINS(msg, "bnb-4bit tensor 'w.weight.quant_state.bitsandbytes__nf4': JSON nested deeper than 64 levels");
}

}  // namespace
}  // namespace qlora::io
