// qlora-export-gguf: HF Llama folder (16-bit or bnb-4bit, optionally + a PEFT adapter merged in) -> GGUF for
// llama.cpp, or a PEFT adapter alone -> GGUF LoRA adapter (--adapter-only).
//
//   qlora-export-gguf --model DIR [--adapter DIR] --out FILE.gguf [--outtype f16] [--overwrite]
//   qlora-export-gguf --adapter DIR --base DIR --out ADAPTER.gguf --adapter-only [--outtype f32]
#include <cstdio>
#include <string>

#include "apps/app_main.h"
#include "common/log.h"
#include "gguf/gguf_export.h"

int main(int argc, char** argv) {
  CLI::App cli{"Export a Llama model (or a LoRA adapter) to GGUF for llama.cpp"};
  std::string model_dir, adapter_dir, base_dir, out, outtype;
  std::string name;
  bool adapter_only = false, overwrite = false;
  cli.add_option("--model", model_dir, "HF Llama folder (config.json, safetensors, tokenizer.model)");
  cli.add_option("--adapter", adapter_dir,
                 "PEFT LoRA adapter folder: merged into --model, or exported alone with "
                 "--adapter-only");
  cli.add_option("--base", base_dir,
                 "base model folder of the adapter (--adapter-only; default: the adapter's "
                 "base_model_name_or_path)");
  cli.add_option("--out", out, "output .gguf file")->required();
  cli.add_option("--outtype", outtype,
                 "f32 | f16 | bf16 | q8_0 | q4_0 | q4_k_m | q5_k_m | q6_k (default f16; adapters: f32, f16, bf16 "
                 "or q8_0). The K-quant mixes match llama-quantize run on the f16 export, byte for byte")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"}));
  cli.add_option("--name", name, "general.name (default: the input folder's name)");
  cli.add_flag("--adapter-only", adapter_only, "write a GGUF LoRA adapter instead of a model");
  cli.add_flag("--overwrite", overwrite, "replace an existing output file");

  return qlora::app::run(cli, argc, argv, [&]() {
    using namespace qlora::gguf;
    ExportSummary s;
    if (adapter_only) {
      if (adapter_dir.empty()) throw qlora::Error("--adapter-only needs --adapter DIR");
      if (!model_dir.empty() && base_dir.empty()) base_dir = model_dir;
      AdapterExportOptions o;
      o.out_type = outtype.empty() ? OutType::kF32 : parse_out_type(outtype);
      o.name = name;
      o.overwrite = overwrite;
      spdlog::info("exporting LoRA adapter {} ({}) -> {}", adapter_dir, out_type_name(o.out_type), out);
      s = export_adapter_gguf(adapter_dir, base_dir, out, o);
    } else {
      if (model_dir.empty()) throw qlora::Error("--model DIR is required (or --adapter DIR --adapter-only)");
      if (!base_dir.empty()) throw qlora::Error("--base is only used with --adapter-only");
      ExportOptions o;
      o.out_type = outtype.empty() ? OutType::kF16 : parse_out_type(outtype);
      o.adapter_dir = adapter_dir;
      o.name = name;
      o.overwrite = overwrite;
      spdlog::info("exporting {}{} ({}) -> {}", model_dir, adapter_dir.empty() ? "" : " + adapter " + adapter_dir,
                   out_type_name(o.out_type), out);
      s = export_model_gguf(model_dir, out, o);
    }
    std::string types;
    for (const auto& [t, n] : s.tensors_by_type) types += (types.empty() ? "" : ", ") + std::to_string(n) + " " + t;
    std::printf("wrote %s: %lld tensors (%s), %s%s\n", s.path.c_str(), static_cast<long long>(s.tensors), types.c_str(),
                qlora::format_bytes(static_cast<double>(s.bytes)).c_str(),
                s.merged_modules ? (", " + std::to_string(s.merged_modules) + " adapter modules merged").c_str() : "");
    return 0;
  });
}
