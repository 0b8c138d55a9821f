#include "data/collate.h"

#include <algorithm>

namespace qlora::data {

void PackedRow::append(const TokenizedExample& ex) {
  ids.insert(ids.end(), ex.ids.begin(), ex.ids.end());
  labels.insert(labels.end(), ex.labels.begin(), ex.labels.end());
  lengths.push_back(ex.size());
}

int32_t choose_pad_id(const tokenizer::Tokenizer& tok) {
  return tok.pad_id() >= 0 ? tok.pad_id() : tok.eos_id();
}

namespace {

// Host buffers for a (B, T) batch, filled row by row.
struct BatchBuilder {
  int64_t B, T;
  std::vector<int64_t> ids, labels, mask, pos, seg;
  Batch batch;

  BatchBuilder(int64_t b, int64_t t, int32_t pad_id)
      : B(b), T(t), ids(b * t, pad_id), labels(b * t, kIgnoreIndex), mask(b * t, 0), pos(b * t, 0), seg(b * t, 0) {}

  // Writes one example at [row, col, col + len) as segment `segment`.
  void put(int64_t row, int64_t col, const int32_t* id, const int32_t* label, int64_t len, int64_t segment) {
    TORCH_CHECK(col + len <= T, "example of ", len, " tokens at column ", col, " overflows a row of ", T);
    for (int64_t t = 0; t < len; ++t) {
      const int64_t k = row * T + col + t;
      ids[k] = id[t];
      labels[k] = label[t];
      mask[k] = 1;
      pos[k] = t;
      seg[k] = segment;
      batch.num_label_tokens += label[t] != kIgnoreIndex;
    }
    batch.num_tokens += len;
    batch.num_examples += 1;
  }

  static torch::Tensor to_tensor(std::vector<int64_t>& v, int64_t b, int64_t t) {
    return torch::from_blob(v.data(), {b, t}, torch::kLong).clone();
  }

  Batch finish() {
    batch.input_ids = to_tensor(ids, B, T);
    batch.labels = to_tensor(labels, B, T);
    batch.attention_mask = to_tensor(mask, B, T);
    batch.position_ids = to_tensor(pos, B, T);
    batch.segment_ids = to_tensor(seg, B, T);
    return std::move(batch);
  }
};

}  // namespace

Batch collate_padded(const std::vector<TokenizedExample>& examples, int32_t pad_id, int64_t pad_to) {
  TORCH_CHECK(!examples.empty(), "collate_padded: no examples");
  int64_t longest = 0;
  for (const auto& ex : examples) longest = std::max(longest, ex.size());
  TORCH_CHECK(pad_to == 0 || pad_to >= longest, "collate_padded: pad_to ", pad_to, " < longest example ", longest);
  const int64_t T = pad_to > 0 ? pad_to : longest;
  BatchBuilder b(static_cast<int64_t>(examples.size()), T, pad_id);
  for (size_t r = 0; r < examples.size(); ++r) {
    b.put(static_cast<int64_t>(r), 0, examples[r].ids.data(), examples[r].labels.data(), examples[r].size(), 1);
  }
  return b.finish();
}

Batch collate_packed(const std::vector<PackedRow>& rows, int32_t pad_id, int64_t row_len) {
  TORCH_CHECK(!rows.empty(), "collate_packed: no rows");
  BatchBuilder b(static_cast<int64_t>(rows.size()), row_len, pad_id);
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t col = 0;
    for (size_t e = 0; e < rows[r].lengths.size(); ++e) {
      const int64_t len = rows[r].lengths[e];
      b.put(static_cast<int64_t>(r), col, rows[r].ids.data() + col, rows[r].labels.data() + col, len,
            static_cast<int64_t>(e) + 1);
      col += len;
    }
  }
  return b.finish();
}

}  // namespace qlora::data
