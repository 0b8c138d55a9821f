// Label conventions shared by the data pipeline, the model's loss and the trainer's token counts.
#pragma once

#include <cstdint>

namespace qlora {

// A label the loss skips (prompt tokens, padding, the first position): PyTorch's cross_entropy ignore_index
// default and the value Hugging Face datasets use.
constexpr int32_t kIgnoreIndex = -100;

}  // namespace qlora
