// qlora-merge: merge a PEFT LoRA adapter into its base model and write an HF folder (16-bit or bnb nf4).
//   qlora-merge --base models/llama --adapter runs/x/adapter --out models/llama-merged [--dtype bf16|fp16|nf4]
//               [--max-shard-size 5GB] [--overwrite]
#include <cstdio>
#include <string>

#include "apps/app_main.h"
#include "common/log.h"
#include "lora/merge.h"

int main(int argc, char** argv) {
  CLI::App cli{"Merge a LoRA adapter (PEFT format) into its base model (16-bit or bnb-4bit folder)"};
  std::string base, adapter, out, dtype = "bf16", shard = "5GB";
  bool overwrite = false;
  cli.add_option("--base", base, "base model folder (HF safetensors, 16-bit or bnb-4bit)")->required();
  cli.add_option("--adapter", adapter, "adapter folder (adapter_model.safetensors + adapter_config.json)")->required();
  cli.add_option("--out", out, "output folder (must not exist unless --overwrite)")->required();
  cli.add_option("--dtype", dtype, "output weights: bf16 | fp16 | nf4 (bitsandbytes 4-bit layout)")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp16", "nf4"}));
  cli.add_option("--max-shard-size", shard, "largest safetensors shard, HF style (5GB, 500MB, 2GiB)")
      ->capture_default_str();
  cli.add_flag("--overwrite", overwrite, "replace an existing output folder");

  return qlora::app::run(cli, argc, argv, [&]() {
    qlora::lora::MergeOptions o;
    o.base_dir = base;
    o.adapter_dir = adapter;
    o.out_dir = out;
    o.format = qlora::lora::parse_merge_format(dtype);
    o.max_shard_bytes = qlora::lora::parse_size_bytes(shard);
    o.overwrite = overwrite;
    const auto r = qlora::lora::merge_adapter(o);

    std::printf("merged %lld adapter modules into %s (%s, base was %s) in %s\n",
                static_cast<long long>(r.modules_merged), r.out_dir.c_str(),
                qlora::lora::merge_format_name(r.format).c_str(), r.base_was_4bit ? "bnb-4bit" : "16-bit",
                qlora::format_duration(r.seconds).c_str());
    std::printf("read %s, wrote %lld tensors:\n", qlora::format_bytes(static_cast<double>(r.bytes_read)).c_str(),
                static_cast<long long>(r.tensors_written));
    for (const auto& f : r.files) std::printf("  %s/%s\n", r.out_dir.c_str(), f.c_str());
    if (!r.requant.empty()) {
      std::printf("4-bit re-quantization error over %zu projections: mean rel %.4e, max rel %.4e\n", r.requant.size(),
                  r.requant_mean_rel, r.requant_max_rel);
    }
    return 0;
  });
}
