#include "io/bnb_format.h"

#include <charconv>
#include <cstring>

#include "common/error.h"
#include "common/json_read.h"

namespace qlora::io {
namespace {

const char* const kQuantStatePrefix = ".weight.quant_state.bitsandbytes__";

torch::Tensor bytes_tensor(const std::string& s) {
  torch::Tensor t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  std::memcpy(t.data_ptr<uint8_t>(), s.data(), s.size());
  return t;
}

[[noreturn]] void bnb_error(const Checkpoint& ckpt, const std::string& key, const std::string& what) {
  throw Error(ckpt.dir().string() + ": bnb-4bit tensor '" + key + "': " + what +
              "\nHINT: the checkpoint is not a valid bitsandbytes 4-bit export; re-create it with qlora-quantize "
              "or transformers' save_pretrained.");
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Checks key exists with the dtype and shape; returns a CPU copy.
torch::Tensor read_part(const Checkpoint& ckpt, const std::string& key, torch::ScalarType dtype,
                        const std::vector<int64_t>& shape) {
  if (!ckpt.contains(key)) bnb_error(ckpt, key, "missing");
  const TensorInfo& info = ckpt.info(key);
  if (info.dtype != dtype) {
    bnb_error(ckpt, key, "dtype " + info.dtype_name + ", expected " + dtype_to_safetensors(dtype));
  }
  if (info.shape != shape) bnb_error(ckpt, key, "shape " + shape_str(info.shape) + ", expected " + shape_str(shape));
  torch::Tensor t = ckpt.get(key).clone();
  ckpt.release(key);
  return t;
}

}  // namespace

std::string torch_dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kFloat16:
      return "float16";
    case torch::kFloat32:
      return "float32";
    default:
      throw Error(std::string("unsupported weight dtype ") + c10::toString(t));
  }
}

torch::ScalarType torch_dtype_from_name(const std::string& name) {
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kFloat16;
  if (name == "float32") return torch::kFloat32;
  throw Error("unsupported dtype '" + name + "' (expected bfloat16, float16 or float32)");
}

std::string python_float_repr(double v) {
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  if (std::isnan(v)) return "NaN";  // json.dumps spelling
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);  // shortest round trip
  std::string sci(buf, res.ptr);
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci = sci.substr(1);
  }
  const size_t epos = sci.find('e');
  std::string mant = sci.substr(0, epos);
  const int exp = std::stoi(sci.substr(epos + 1));
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits += c;
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int n = static_cast<int>(digits.size());
  if (exp < -4 || exp >= 16) {
    std::string out = sign + digits.substr(0, 1);
    if (n > 1) out += "." + digits.substr(1);
    char e[16];
    std::snprintf(e, sizeof(e), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return out + e;
  }
  if (exp >= 0) {
    std::string int_part = digits.substr(0, std::min(n, exp + 1));
    while (static_cast<int>(int_part.size()) < exp + 1) int_part += '0';
    std::string frac = n > exp + 1 ? digits.substr(exp + 1) : "0";
    return sign + int_part + "." + frac;
  }
  return sign + "0." + std::string(-exp - 1, '0') + digits;
}

std::string bnb_quant_state_json(const quant::QuantizedTensor& q) {
  std::string s = "{\"quant_type\": \"" + quant::quant_type_name(q.type) +
                  "\", \"blocksize\": " + std::to_string(q.blocksize) + ", \"dtype\": \"" + torch_dtype_name(q.dtype) +
                  "\", \"shape\": " + shape_str(q.shape);
  if (q.double_quant) {
    s += ", \"nested_blocksize\": " + std::to_string(quant::kNestedBlocksize) +
         ", \"nested_dtype\": \"float32\", \"nested_offset\": " + python_float_repr(static_cast<double>(q.offset));
  }
  return s + "}";
}

std::vector<std::pair<std::string, torch::Tensor>> bnb_tensors(const std::string& prefix,
                                                               const quant::QuantizedTensor& q) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  const std::string w = prefix + ".weight";
  out.emplace_back(w, q.packed.to(torch::kCPU).reshape({-1, 1}));
  out.emplace_back(w + ".absmax", q.absmax.to(torch::kCPU));
  // bitsandbytes' quant_map is get_4bit_type(), whose FP4 entry 8 is +0.0 (its table's `-0` is a Python int); ours
  // is -0.0 (code 8 dequantizes to -0 * absmax, as CUDA's sign * LUT does). Written as bitsandbytes writes it.
  const torch::Tensor code = q.code.to(torch::kCPU, torch::kFloat32);
  out.emplace_back(w + ".quant_map", torch::where(code == 0, torch::zeros_like(code), code));
  if (q.double_quant) {
    out.emplace_back(w + ".nested_absmax", q.absmax2.to(torch::kCPU, torch::kFloat32));
    out.emplace_back(w + ".nested_quant_map", q.nested_code.to(torch::kCPU, torch::kFloat32));
  }
  out.emplace_back(w + ".quant_state.bitsandbytes__" + quant::quant_type_name(q.type),
                   bytes_tensor(bnb_quant_state_json(q)));
  return out;
}

bool bnb_is_quantized(const Checkpoint& ckpt, const std::string& prefix) {
  return ckpt.contains(prefix + kQuantStatePrefix + "nf4") || ckpt.contains(prefix + kQuantStatePrefix + "fp4");
}

std::vector<std::string> bnb_keys(const Checkpoint& ckpt, const std::string& prefix) {
  std::vector<std::string> out;
  const std::string w = prefix + ".weight";
  for (const auto& name : ckpt.names()) {
    if (name == w || name.rfind(w + ".", 0) == 0) out.push_back(name);
  }
  return out;
}

quant::QuantizedTensor bnb_read(const Checkpoint& ckpt, const std::string& prefix) {
  const std::string w = prefix + ".weight";
  const bool has_nf4 = ckpt.contains(prefix + kQuantStatePrefix + "nf4");
  const bool has_fp4 = ckpt.contains(prefix + kQuantStatePrefix + "fp4");
  if (has_nf4 == has_fp4) {
    bnb_error(ckpt, w + ".quant_state.bitsandbytes__*",
              has_nf4 ? "both __nf4 and __fp4 quant states present" : "no quant_state (expected exactly one)");
  }
  const std::string qs_key = prefix + kQuantStatePrefix + (has_nf4 ? "nf4" : "fp4");
  torch::Tensor qs_bytes = ckpt.get(qs_key);
  if (qs_bytes.scalar_type() != torch::kUInt8 || qs_bytes.dim() != 1) bnb_error(ckpt, qs_key, "must be a U8 vector");
  const std::string js(reinterpret_cast<const char*>(qs_bytes.data_ptr<uint8_t>()), qs_bytes.numel());
  const nlohmann::json j = parse_json(js, ckpt.dir().string() + ": bnb-4bit tensor '" + qs_key + "'");
  quant::QuantizedTensor q;
  // Integers must be JSON integers: nlohmann converts a float such as 1e300 to int64_t with undefined behaviour.
  const auto check_int = [&](const nlohmann::json& v, const std::string& what) {
    if (!v.is_number_integer()) bnb_error(ckpt, qs_key, what + " must be an integer");
  };
  if (j.is_object() && j.contains("blocksize")) check_int(j["blocksize"], "blocksize");
  if (j.is_object() && j.contains("nested_blocksize")) check_int(j["nested_blocksize"], "nested_blocksize");
  if (j.is_object() && j.contains("shape") && j["shape"].is_array()) {
    for (const auto& d : j["shape"]) check_int(d, "shape");
  }
  try {
    q.type = quant::parse_quant_type(j.at("quant_type").get<std::string>());
    q.blocksize = j.at("blocksize").get<int64_t>();
    q.dtype = torch_dtype_from_name(j.at("dtype").get<std::string>());
    q.shape = j.at("shape").get<std::vector<int64_t>>();
    q.double_quant = j.contains("nested_offset") || j.contains("nested_blocksize");
    if (q.double_quant) {
      if (j.at("nested_blocksize").get<int64_t>() != quant::kNestedBlocksize) {
        bnb_error(ckpt, qs_key, "nested_blocksize must be 256");
      }
      if (j.value("nested_dtype", std::string("float32")) != "float32")
        bnb_error(ckpt, qs_key, "nested_dtype must be float32");
      q.offset = j.at("nested_offset").get<float>();
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    bnb_error(ckpt, qs_key,
              std::string("bad quant_state field: ") + e.what() + " in " + js.substr(0, kJsonExcerptChars));
  }
  if (quant::quant_type_name(q.type) != (has_nf4 ? "nf4" : "fp4")) {
    bnb_error(ckpt, qs_key, "quant_type '" + quant::quant_type_name(q.type) + "' does not match the key suffix");
  }
  if (q.blocksize < 32 || q.blocksize > 4096 || (q.blocksize & (q.blocksize - 1)) != 0) {
    bnb_error(ckpt, qs_key, "blocksize " + std::to_string(q.blocksize) + " is not a power of two in [32, 4096]");
  }
  if (q.shape.empty()) bnb_error(ckpt, qs_key, "empty shape");
  int64_t n = 1;
  for (int64_t d : q.shape) {
    if (d <= 0) bnb_error(ckpt, qs_key, "bad shape " + shape_str(q.shape));
    if (__builtin_mul_overflow(n, d, &n)) bnb_error(ckpt, qs_key, "shape " + shape_str(q.shape) + " overflows");
  }
  const int64_t nblocks = n / q.blocksize + (n % q.blocksize != 0);
  q.packed = read_part(ckpt, w, torch::kUInt8, {n / 2 + n % 2, 1}).reshape({-1});
  q.absmax = read_part(ckpt, w + ".absmax", q.double_quant ? torch::kUInt8 : torch::kFloat32, {nblocks});
  q.code = read_part(ckpt, w + ".quant_map", torch::kFloat32, {16});
  if (q.double_quant) {
    const int64_t n2 = (nblocks + quant::kNestedBlocksize - 1) / quant::kNestedBlocksize;
    q.absmax2 = read_part(ckpt, w + ".nested_absmax", torch::kFloat32, {n2});
    q.nested_code = read_part(ckpt, w + ".nested_quant_map", torch::kFloat32, {256});
  } else if (ckpt.contains(w + ".nested_absmax") || ckpt.contains(w + ".nested_quant_map")) {
    bnb_error(ckpt, w + ".nested_absmax", "present but the quant_state has no nested_* fields");
  }
  ckpt.release(qs_key);
  return q;
}

nlohmann::json bnb_quantization_config(quant::QuantType type, bool double_quant, const std::string& compute_dtype) {
  nlohmann::json j;
  j["_load_in_4bit"] = true;
  j["_load_in_8bit"] = false;
  j["bnb_4bit_compute_dtype"] = compute_dtype;
  j["bnb_4bit_quant_storage"] = "uint8";
  j["bnb_4bit_quant_type"] = quant::quant_type_name(type);
  j["bnb_4bit_use_double_quant"] = double_quant;
  j["llm_int8_enable_fp32_cpu_offload"] = false;
  j["llm_int8_has_fp16_weight"] = false;
  j["llm_int8_skip_modules"] = nullptr;
  j["llm_int8_threshold"] = 6.0;
  j["load_in_4bit"] = true;
  j["load_in_8bit"] = false;
  j["quant_method"] = "bitsandbytes";
  return j;
}

}  // namespace qlora::io
