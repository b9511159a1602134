// The three rows a KV store keeps per token and layer: the attention-input activation (width h)
// and the K and V it produces (width h_kv each). Shared by the store, which holds them, and the
// decode schedule, which says when each is copied.
#pragma once

namespace kvpr {

enum class Part { act, k, v };

}  // namespace kvpr
