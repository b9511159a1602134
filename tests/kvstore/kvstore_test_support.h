// Helpers shared by the kvstore tests: small shapes, and rows whose every value says where it
// belongs (token, layer, part, column, and a salt per sequence), written and checked through the
// spans of any KvStoreClient.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "kvpr/kvstore/kv_store_client.h"

namespace kvpr::kvstore::testing {

inline StoreShape small_shape(DType dtype = DType::f32, std::int64_t n_layers = 2) {
  StoreShape s;
  s.n_layers = n_layers;
  s.h = 8;
  s.h_kv = 4;
  s.dtype = dtype;
  s.block_tokens = 4;
  return s;
}

inline float pattern(std::int64_t t, std::int64_t layer, Part part, std::int64_t col, int salt) {
  return static_cast<float>(salt * 100000 + t * 1000 + layer * 100 + static_cast<int>(part) * 10 +
                            col);
}

// Writes pattern(...) into rows [t0, t1) of every layer and part (f32 shapes).
inline void fill(KvStoreClient& store, SeqId seq, std::int64_t t0, std::int64_t t1, int salt = 0) {
  const auto& shape = store.shape();
  for (std::int64_t layer = 0; layer < shape.n_layers; ++layer) {
    for (Part part : {Part::act, Part::k, Part::v}) {
      for (const auto& span : store.locate(seq, layer, part, t0, t1)) {
        auto* rows = reinterpret_cast<float*>(span.data);
        for (std::int64_t r = 0; r < span.n_tokens; ++r) {
          for (std::int64_t c = 0; c < shape.width(part); ++c) {
            rows[r * shape.width(part) + c] = pattern(span.t0 + r, layer, part, c, salt);
          }
        }
      }
    }
  }
}

// Counts rows of [t0, t1) (all layers and parts) that do not hold pattern(...).
inline int count_bad_rows(KvStoreClient& store, SeqId seq, std::int64_t t0, std::int64_t t1,
                          int salt = 0) {
  const auto& shape = store.shape();
  int bad = 0;
  for (std::int64_t layer = 0; layer < shape.n_layers; ++layer) {
    for (Part part : {Part::act, Part::k, Part::v}) {
      for (const auto& span : store.locate(seq, layer, part, t0, t1)) {
        const auto* rows = reinterpret_cast<const float*>(span.data);
        for (std::int64_t r = 0; r < span.n_tokens; ++r) {
          for (std::int64_t c = 0; c < shape.width(part); ++c) {
            if (rows[r * shape.width(part) + c] != pattern(span.t0 + r, layer, part, c, salt)) {
              ++bad;
              break;
            }
          }
        }
      }
    }
  }
  return bad;
}

}  // namespace kvpr::kvstore::testing
