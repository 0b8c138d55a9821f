// GgufWriter: every KV type, tensor infos and data, read back by the independent reader in gguf_test_reader.h;
// and one small file compared byte for byte with a hand-assembled one.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "gguf/gguf_test_reader.h"
#include "gguf/gguf_writer.h"
#include "test_util.h"

namespace qlora::gguf {
namespace {

namespace rd = qlora::test::gguf_reader;
using qlora::test::temp_dir;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(GgufWriter, EveryValueTypeRoundTrips) {
  GgufWriter w;
  w.add_u8("t.u8", 200);
  w.add_i8("t.i8", -100);
  w.add_u16("t.u16", 60000);
  w.add_i16("t.i16", -30000);
  w.add_u32("t.u32", 4000000000u);
  w.add_i32("t.i32", -2000000000);
  w.add_f32("t.f32", 1.5e-5f);
  w.add_bool("t.bool_true", true);
  w.add_bool("t.bool_false", false);
  w.add_string("t.str", "h\xc3\xa9llo");
  w.add_u64("t.u64", 1ull << 40);
  w.add_i64("t.i64", -(1ll << 40));
  w.add_f64("t.f64", 0.1);
  w.add_array_u8("t.arr_u8", {1, 2, 255});
  w.add_array_i32("t.arr_i32", {-1, 0, 7});
  w.add_array_u32("t.arr_u32", {9});
  w.add_array_i64("t.arr_i64", {-5, 5});
  w.add_array_f32("t.arr_f32", {0.25f, -2.0f});
  w.add_array_f64("t.arr_f64", {1e300});
  w.add_array_bool("t.arr_bool", {true, false, true});
  w.add_array_string("t.arr_str", {"a", "", "\xe2\x96\x81the"});
  w.add_array_string("t.arr_empty", {});
  const auto path = temp_dir() / "kv.gguf";
  w.write_file(path, [](size_t, const TensorSpec&) { return torch::Tensor(); });
  const auto f = rd::read(path);
  ASSERT_EQ(f.tensors.size(), 0u);
  ASSERT_EQ(f.kv.size(), 22u);
  EXPECT_EQ(f.key_order.front(), "t.u8");
  EXPECT_EQ(f.key_order.back(), "t.arr_empty");
  struct Want {
    const char* key;
    uint32_t type;
    double value;
  };
  for (const Want& x :
       {Want{"t.u8", 0, 200}, Want{"t.i8", 1, -100}, Want{"t.u16", 2, 60000}, Want{"t.i16", 3, -30000},
        Want{"t.u32", 4, 4000000000.0}, Want{"t.i32", 5, -2000000000.0}, Want{"t.f32", 6, static_cast<double>(1.5e-5f)},
        Want{"t.bool_true", 7, 1}, Want{"t.bool_false", 7, 0}, Want{"t.u64", 10, 1099511627776.0},
        Want{"t.i64", 11, -1099511627776.0}, Want{"t.f64", 12, 0.1}}) {
    SCOPED_TRACE(x.key);
    EXPECT_EQ(f.at(x.key).type, x.type);
    EXPECT_FALSE(f.at(x.key).is_array);
    EXPECT_EQ(f.at(x.key).n(), x.value);
  }
  EXPECT_EQ(f.at("t.str").type, 8u);
  EXPECT_EQ(f.at("t.str").s(), "h\xc3\xa9llo");
  EXPECT_EQ(f.at("t.arr_u8").elem_type, 0u);
  EXPECT_EQ(f.at("t.arr_u8").num, (std::vector<double>{1, 2, 255}));
  EXPECT_EQ(f.at("t.arr_i32").elem_type, 5u);
  EXPECT_EQ(f.at("t.arr_i32").num, (std::vector<double>{-1, 0, 7}));
  EXPECT_EQ(f.at("t.arr_u32").elem_type, 4u);
  EXPECT_EQ(f.at("t.arr_i64").elem_type, 11u);
  EXPECT_EQ(f.at("t.arr_i64").num, (std::vector<double>{-5, 5}));
  EXPECT_EQ(f.at("t.arr_f32").elem_type, 6u);
  EXPECT_EQ(f.at("t.arr_f32").num, (std::vector<double>{0.25, -2.0}));
  EXPECT_EQ(f.at("t.arr_f64").elem_type, 12u);
  EXPECT_EQ(f.at("t.arr_f64").num, (std::vector<double>{1e300}));
  EXPECT_EQ(f.at("t.arr_bool").elem_type, 7u);
  EXPECT_EQ(f.at("t.arr_bool").num, (std::vector<double>{1, 0, 1}));
  EXPECT_EQ(f.at("t.arr_str").elem_type, 8u);
  EXPECT_EQ(f.at("t.arr_str").str, (std::vector<std::string>{"a", "", "\xe2\x96\x81the"}));
  EXPECT_TRUE(f.at("t.arr_empty").is_array);
  EXPECT_TRUE(f.at("t.arr_empty").str.empty());
}

TEST(GgufWriter, TensorsOfEveryTypeDecode) {
  torch::manual_seed(0);
  const auto a = torch::randn({3, 5});                    // F32, odd sizes
  const auto b = torch::randn({2, 4, 6}) * 100;           // F16
  const auto c = torch::randn({7}).to(torch::kBFloat16);  // BF16 from bf16: exact
  const auto d = torch::randn({4, 64}) * 0.02;            // Q8_0
  const auto e = torch::randn({2, 96});                   // Q4_0
  GgufWriter w;
  w.add_u32("general.alignment", 32);
  w.add_tensor("a", {3, 5}, GgmlType::kF32);
  w.add_tensor("b.weight", {2, 4, 6}, GgmlType::kF16);
  w.add_tensor("c", {7}, GgmlType::kBF16);
  w.add_tensor("d", {4, 64}, GgmlType::kQ8_0);
  w.add_tensor("e", {2, 96}, GgmlType::kQ4_0);
  const std::vector<torch::Tensor> data = {a, b, c, d, e};
  const auto path = temp_dir() / "t.gguf";
  std::vector<size_t> seen;
  w.write_file(
      path, [&](size_t i, const TensorSpec&) { return data[i]; },
      [&](size_t i, const TensorSpec&) { seen.push_back(i); });
  EXPECT_EQ(seen, (std::vector<size_t>{0, 1, 2, 3, 4}));
  const auto f = rd::read(path);
  EXPECT_EQ(fs::file_size(path), w.file_bytes());
  EXPECT_EQ(f.data_start % 32, 0u);
  ASSERT_EQ(f.tensors.size(), 5u);
  EXPECT_EQ(f.tensor("a").ne, (std::vector<uint64_t>{5, 3}));
  EXPECT_EQ(f.tensor("b.weight").ne, (std::vector<uint64_t>{6, 4, 2}));
  EXPECT_EQ(f.tensor("c").ne, (std::vector<uint64_t>{7}));
  EXPECT_EQ(f.tensor("d").ne, (std::vector<uint64_t>{64, 4}));
  EXPECT_EQ(f.tensor("e").ne, (std::vector<uint64_t>{96, 2}));
  EXPECT_EQ(f.tensor("a").type, 0u);
  EXPECT_EQ(f.tensor("b.weight").type, 1u);
  EXPECT_EQ(f.tensor("c").type, 30u);
  EXPECT_EQ(f.tensor("d").type, 8u);
  EXPECT_EQ(f.tensor("e").type, 2u);
  // offsets: each previous size rounded up to 32
  EXPECT_EQ(f.tensor("a").offset, 0u);
  EXPECT_EQ(f.tensor("b.weight").offset, 64u);   // 60 bytes -> 64
  EXPECT_EQ(f.tensor("c").offset, 64u + 96u);    // 96 bytes
  EXPECT_EQ(f.tensor("d").offset, 160u + 32u);   // 14 bytes -> 32
  EXPECT_EQ(f.tensor("e").offset, 192u + 288u);  // 8 blocks * 34 = 272 -> 288
  EXPECT_EQ(f.tensor("e").nbytes, 6u * 18u);

  auto as_vec = [](const torch::Tensor& t) {
    const auto c = t.to(torch::kFloat32).contiguous();
    return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  };
  EXPECT_EQ(f.decode("a"), as_vec(a));
  const auto bd = f.decode("b.weight");
  const auto bv = as_vec(b);
  for (size_t i = 0; i < bv.size(); ++i) ASSERT_EQ(bd[i], static_cast<float>(c10::Half(bv[i]))) << i;
  EXPECT_EQ(f.decode("c"), as_vec(c));
  const auto dd = f.decode("d"), dv = as_vec(d);
  for (size_t blk = 0; blk < dv.size() / 32; ++blk) {
    double amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(static_cast<double>(dv[blk * 32 + j])));
    const double bound = amax / 127.0 * (0.5 + 127.0 / 2048.0) + 1e-12;
    for (int j = 0; j < 32; ++j) ASSERT_LE(std::fabs(dd[blk * 32 + j] - dv[blk * 32 + j]), bound);
  }
  const auto ed = f.decode("e"), ev = as_vec(e);
  for (size_t blk = 0; blk < ev.size() / 32; ++blk) {
    double amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(static_cast<double>(ev[blk * 32 + j])));
    const double bound = amax / 8.0 * (1.0 + 8.0 / 2048.0) + 1e-12;  // loosest case (clamped code), see quant tests
    for (int j = 0; j < 32; ++j) ASSERT_LE(std::fabs(ed[blk * 32 + j] - ev[blk * 32 + j]), bound);
  }
}

// A one-KV, one-tensor file assembled by hand.
TEST(GgufWriter, BytesMatchHandAssembledFile) {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_tensor("w", {2, 3}, GgmlType::kF16);
  const auto path = temp_dir() / "small.gguf";
  w.write_file(path, [](size_t, const TensorSpec&) {
    return torch::tensor({1.0f, -2.0f, 0.5f, 0.0f, 65504.0f, 1.0f / 3.0f}).reshape({2, 3});
  });
  std::string want;
  auto u32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) want.push_back(static_cast<char>((v >> (8 * i)) & 255));
  };
  auto u64 = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) want.push_back(static_cast<char>((v >> (8 * i)) & 255));
  };
  want += "GGUF";
  u32(3);
  u64(1);  // tensors
  u64(1);  // kvs
  u64(20);
  want += "general.architecture";
  u32(8);
  u64(5);
  want += "llama";
  u64(1);
  want += "w";
  u32(2);
  u64(3);  // ne[0] = columns
  u64(2);
  u32(1);  // F16
  u64(0);
  while (want.size() % 32) want.push_back('\0');
  // fp16 bits: 1 -> 3C00, -2 -> C000, 0.5 -> 3800, 0 -> 0000, 65504 -> 7BFF, 1/3 -> 3555 (0x1555 * 2^-12 rounded)
  for (uint16_t h : {0x3C00, 0xC000, 0x3800, 0x0000, 0x7BFF, 0x3555}) {
    want.push_back(static_cast<char>(h & 255));
    want.push_back(static_cast<char>(h >> 8));
  }
  while (want.size() % 32) want.push_back('\0');
  EXPECT_EQ(slurp(path), want);
}

TEST(GgufWriter, RejectsBadTensorDeclarations) {
  GgufWriter w;
  EXPECT_NO_THROW(w.add_tensor(std::string(64, 'n'), {4}, GgmlType::kF32));
  EXPECT_THROW(w.add_tensor(std::string(65, 'n'), {4}, GgmlType::kF32), qlora::Error);
  EXPECT_THROW(w.add_tensor("q", {4, 48}, GgmlType::kQ8_0), qlora::Error);  // 48 % 32 != 0
  EXPECT_THROW(w.add_tensor("q", {4, 20}, GgmlType::kQ4_0), qlora::Error);
  EXPECT_THROW(w.add_tensor("z", {0, 4}, GgmlType::kF32), qlora::Error);
  EXPECT_THROW(w.add_tensor("five", {1, 1, 1, 1, 1}, GgmlType::kF32), qlora::Error);
}

TEST(GgufWriter, ShapeMismatchLeavesNoFile) {
  GgufWriter w;
  w.add_tensor("w", {2, 3}, GgmlType::kF32);
  const auto path = temp_dir() / "bad.gguf";
  EXPECT_ANY_THROW(w.write_file(path, [](size_t, const TensorSpec&) { return torch::zeros({3, 2}); }));
  EXPECT_FALSE(fs::exists(path));
}

TEST(GgufWriter, CustomAlignment) {
  GgufWriter w(64);
  w.add_u32("general.alignment", 64);
  w.add_tensor("a", {3}, GgmlType::kF32);
  w.add_tensor("b", {3}, GgmlType::kF32);
  const auto path = temp_dir() / "a64.gguf";
  w.write_file(path, [](size_t i, const TensorSpec&) { return torch::full({3}, static_cast<float>(i)); });
  const auto f = rd::read(path);
  EXPECT_EQ(f.alignment, 64u);
  EXPECT_EQ(f.data_start % 64, 0u);
  EXPECT_EQ(f.tensor("b").offset, 64u);
  EXPECT_EQ(f.decode("b"), (std::vector<float>{1, 1, 1}));
}

}  // namespace
}  // namespace qlora::gguf
