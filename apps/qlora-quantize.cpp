// qlora-quantize: 16-bit HF Llama folder -> bitsandbytes 4-bit folder (loadable by transformers + bnb and by
// qlora.cpp without re-quantizing).
//
//   qlora-quantize --in models/tiny --out models/tiny-nf4 [--quant nf4|fp4] [--blocksize 64] [--no-double-quant]
#include <spdlog/spdlog.h>

#include <string>

#include "apps/app_main.h"
#include "common/log.h"
#include "model/quantize_checkpoint.h"

int main(int argc, char** argv) {
  CLI::App cli{"Quantize a 16-bit HF Llama folder to a bnb-4bit (NF4/FP4) folder."};
  std::string in, out, quant = "nf4";
  bool no_double_quant = false;
  qlora::model::QuantizeCheckpointOptions opts;
  cli.add_option("--in", in, "input HF model folder (bf16/fp16/fp32 safetensors)")->required();
  cli.add_option("--out", out, "output folder (must not exist unless --overwrite)")->required();
  cli.add_option("--quant", quant, "4-bit data type")->check(CLI::IsMember({"nf4", "fp4"}))->capture_default_str();
  cli.add_option("--blocksize", opts.blocksize, "elements per absmax block")
      ->check(CLI::IsMember({32, 64, 128, 256, 512, 1024, 2048, 4096}))
      ->capture_default_str();
  cli.add_flag("--no-double-quant", no_double_quant, "store fp32 absmax instead of 8-bit double quantization");
  cli.add_flag("--overwrite", opts.overwrite, "replace an existing output folder");

  return qlora::app::run(cli, argc, argv, [&] {
    opts.type = qlora::quant::parse_quant_type(quant);
    opts.double_quant = !no_double_quant;
    const auto s = qlora::model::quantize_checkpoint(in, out, opts);
    spdlog::info("quantized {} projections to {}{} (blocksize {}), copied {} tensors", s.tensors_quantized, quant,
                 opts.double_quant ? "+dq" : "", opts.blocksize, s.tensors_copied);
    spdlog::info("weights {} -> {} ({:.2f}x smaller) in {}; peak RSS {}; wrote {}",
                 qlora::format_bytes(static_cast<double>(s.input_bytes)),
                 qlora::format_bytes(static_cast<double>(s.output_bytes)),
                 static_cast<double>(s.input_bytes) / static_cast<double>(std::max<uint64_t>(s.output_bytes, 1)),
                 qlora::format_duration(s.seconds), qlora::format_bytes(static_cast<double>(qlora::peak_rss_bytes())),
                 out);
    return 0;
  });
}
