// The decode schedule on its own: the order of ops, chunk marks, block spans and row offsets.
#include "kvpr/planner/decode_schedule.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "kvpr/common/error.h"

namespace kvpr::planner {
namespace {

std::vector<DecodeOp> ops_of(const DecodeSchedule& schedule) {
  std::vector<DecodeOp> ops;
  schedule.run([&](const DecodeOp& op) { ops.push_back(op); });
  return ops;
}

TEST(DecodeSchedule, BlocksChunksAndRowsOfABatch) {
  // Two sequences: s = 40 (l = 20) and s = 7 (l = 7), blocks of 16, chunks of 16 rows.
  const DecodeSchedule schedule({3, 16, {40, 7}, {20, 9}, 16, false});
  EXPECT_EQ(schedule.l(0), 20);
  EXPECT_EQ(schedule.l(1), 7);  // clamped to s
  EXPECT_EQ(schedule.l_total(), 27);
  EXPECT_EQ(schedule.kv_total(), 20);
  EXPECT_EQ(schedule.act_row(1), 20);
  EXPECT_EQ(schedule.kv_row(1), 20);
  ASSERT_EQ(schedule.act_positions().size(), 27u);
  EXPECT_EQ(schedule.act_positions()[20], 0);

  std::int64_t act_rows = 0, kv_rows = 0;
  std::vector<std::string> layer0;
  for (const auto& op : ops_of(schedule)) {
    if (op.kind == OpKind::fetch) {
      EXPECT_EQ(op.t0 / 16, (op.t0 + op.n - 1) / 16) << "a fetch never crosses a store block";
      if (op.layer == 0) (op.part == Part::act ? act_rows : kv_rows) += op.n;
    }
    if (op.layer == 0) layer0.emplace_back(to_string(op.kind));
  }
  EXPECT_EQ(act_rows, 27);
  EXPECT_EQ(kv_rows, 40);  // K and V of seq 0's tokens [20, 40)
  // Activation blocks [0,16) → chunk 0 at 16 rows; [16,20) and seq 1's [0,7) → chunk 1 at 27;
  // then K and V of [20,32) and [32,40). Layer 2's fetch into slot 0 follows release_slot but is
  // reported as layer 2's.
  const std::vector<std::string> want = {"prefetch",   "fetch",        "chunk_landed", "fetch",
                                         "fetch",      "chunk_landed", "fetch",        "fetch",
                                         "fetch",      "fetch",        "kv_landed",    "project",
                                         "write_back", "recompute",    "recompute",    "await_kv",
                                         "attend",     "release_slot", "finish_layer"};
  EXPECT_EQ(layer0, want);
}

TEST(DecodeSchedule, PrefetchesTwoLayersAheadIntoAlternatingSlots) {
  const DecodeSchedule schedule({4, 16, {32}, {0}, 64, false});
  std::vector<std::pair<int, int>> fills;  // (layer, slot) per kv_landed, in order
  std::vector<int> awaited;
  for (const auto& op : ops_of(schedule)) {
    if (op.kind == OpKind::kv_landed) fills.emplace_back(op.layer, op.slot);
    if (op.kind == OpKind::await_slot) awaited.push_back(op.layer);
  }
  const std::vector<std::pair<int, int>> want = {{0, 0}, {1, 1}, {2, 0}, {3, 1}};
  EXPECT_EQ(fills, want);
  EXPECT_EQ(awaited, (std::vector<int>{2, 3}));  // the first two fills find their slots free

  // Each layer is announced to the store once, before the fetch that locates it: layers 0-2 at
  // the start, layer i + 3 right after the fetch of layer i + 2 was enqueued.
  std::vector<int> announced;
  int fetches_seen = 0;  // kv_landed marks so far
  for (const auto& op : ops_of(schedule)) {
    if (op.kind == OpKind::kv_landed) ++fetches_seen;
    if (op.kind != OpKind::prefetch) continue;
    announced.push_back(op.layer);
    EXPECT_LT(fetches_seen, op.layer + 1) << "layer " << op.layer << " announced after its fetch";
  }
  EXPECT_EQ(announced, (std::vector<int>{0, 1, 2, 3}));
}

TEST(DecodeSchedule, PaperChunkIsOneChunkAndResidentFetchesNothing) {
  const DecodeSchedule paper({2, 16, {100, 50}, {60, 50}, kPaperChunk, false});
  int marks = 0, recomputes = 0;
  for (const auto& op : ops_of(paper)) {
    marks += op.kind == OpKind::chunk_landed && op.layer == 0;
    if (op.kind == OpKind::recompute && op.layer == 0) {
      ++recomputes;
      EXPECT_EQ(op.n, 110);
    }
  }
  EXPECT_EQ(marks, 1);
  EXPECT_EQ(recomputes, 1);

  const DecodeSchedule resident({2, 16, {100}, {60}, 64, true});
  for (const auto& op : ops_of(resident)) {
    EXPECT_NE(op.kind, OpKind::fetch);
    EXPECT_NE(op.kind, OpKind::recompute);
    EXPECT_NE(op.kind, OpKind::await_kv);
  }
  EXPECT_EQ(resident.l_total(), 0);
  EXPECT_EQ(resident.kv_total(), 0);
}

TEST(DecodeSchedule, LayerKvIsOneFillOfSlotZero) {
  const DecodeSchedule schedule({3, 16, {70}, {33}, 16, false});
  std::vector<std::string> kinds;
  schedule.run_layer_kv(2, [&](const DecodeOp& op) {
    EXPECT_EQ(op.layer, 2);
    EXPECT_EQ(op.slot, 0);
    kinds.emplace_back(to_string(op.kind));
  });
  // act blocks [0,16) [16,32) [32,33) with marks at 16, 32, 33; K,V of [33,48) [48,64) [64,70).
  const std::vector<std::string> want = {
      "fetch",     "chunk_landed", "fetch",     "chunk_landed", "fetch",   "chunk_landed",
      "fetch",     "fetch",        "fetch",     "fetch",        "fetch",   "fetch",
      "kv_landed", "recompute",    "recompute", "recompute",    "await_kv"};
  EXPECT_EQ(kinds, want);
  EXPECT_THROW(schedule.run_layer_kv(3, [](const DecodeOp&) {}), Error);
}

TEST(DecodeSchedule, ThreeWaySplitFetchesOnlyUpToMAndAttendsTheRestOnTheHost) {
  // s = 40: l = 8, m = 24 → [8, 24) fetched, [24, 40) on the host; s = 10: m = 5 clamped to l = 6.
  const DecodeSchedule schedule({2, 16, {40, 10}, {8, 6}, 64, false, {24, 5}});
  EXPECT_EQ(schedule.m(0), 24);
  EXPECT_EQ(schedule.m(1), 6);
  EXPECT_EQ(schedule.kv_total(), 16);
  EXPECT_EQ(schedule.host_total(), 16 + 4);
  std::int64_t kv_rows = 0;
  std::vector<std::string> layer1;
  for (const auto& op : ops_of(schedule)) {
    if (op.kind == OpKind::fetch && op.part == Part::k && op.layer == 1) {
      EXPECT_GE(op.t0, 8);
      EXPECT_LE(op.t0 + op.n, 24);
      kv_rows += op.n;
    }
    if (op.layer == 1 && op.kind != OpKind::fetch && op.kind != OpKind::chunk_landed &&
        op.kind != OpKind::kv_landed)
      layer1.emplace_back(to_string(op.kind));
  }
  EXPECT_EQ(kv_rows, 16);
  // The query goes down after the projection; the host works while the device recomputes and
  // attends; its partials come up and merge after the slot's release.
  // (Layer 1's rows were announced to the store at the step's start.)
  const std::vector<std::string> want = {
      "prefetch", "project", "download_query", "write_back",      "host_attend", "recompute",
      "await_kv", "attend",  "release_slot",   "upload_partials", "merge",       "finish_layer"};
  EXPECT_EQ(layer1, want);

  // m = s everywhere (or no m): today's schedule, no host ops; m = 0 clamps to l.
  for (const auto& m : {std::vector<std::int64_t>{}, std::vector<std::int64_t>{40}}) {
    const DecodeSchedule two_way({2, 16, {40}, {8}, 64, false, m});
    EXPECT_EQ(two_way.host_total(), 0);
    for (const auto& op : ops_of(two_way)) {
      EXPECT_NE(op.kind, OpKind::host_attend);
      EXPECT_NE(op.kind, OpKind::merge);
    }
  }
  const DecodeSchedule all_host({2, 16, {40}, {0}, 64, false, {0}});
  EXPECT_EQ(all_host.kv_total(), 0);
  EXPECT_EQ(all_host.host_total(), 40);
  const DecodeSchedule resident({2, 16, {40}, {0}, 64, true, {0}});
  EXPECT_EQ(resident.host_total(), 0);
  EXPECT_THROW(DecodeSchedule({1, 16, {4, 5}, {0, 0}, 64, false, {1}}), Error);
}

// Throughput mode's block schedule: three layers, micro-batches of 2 and 1 sequences, weights
// streamed. Units (layer, micro-batch) fill alternating slots two units ahead; each layer's weights
// load on the copy queue a layer ahead (after the release of the layer that held their slot), are
// awaited before its first micro-batch and released after its last.
TEST(DecodeSchedule, BlockScheduleRunsEachLayerPerMicroBatchWithWeightsLoadedOnce) {
  ScheduleShape shape{3, 16, {40, 7, 20}, {20, 3, 0}, 16, false};
  shape.micro = {2, 1};
  shape.stream_weights = true;
  const DecodeSchedule schedule(shape);
  ASSERT_EQ(schedule.micro_batches(), 2);
  EXPECT_EQ(schedule.micro_first(1), 2);
  EXPECT_EQ(schedule.act_row(1), 20);  // rows within its micro-batch's slot
  EXPECT_EQ(schedule.act_row(2), 0);
  EXPECT_EQ(schedule.kv_row(2), 0);
  EXPECT_EQ(schedule.l_total(), 23);
  EXPECT_EQ(schedule.kv_total(), 20 + 4 + 20);
  EXPECT_EQ(schedule.slot_act_rows(), 23);
  EXPECT_EQ(schedule.slot_kv_rows(), 24);
  ASSERT_EQ(schedule.act_positions(1).size(), 0u);

  std::vector<std::string> events;                // "kind layer micro"
  std::map<std::pair<int, int>, int> fetch_slot;  // unit → slot it was fetched into
  for (const auto& op : ops_of(schedule)) {
    if (op.kind == OpKind::fetch) {
      fetch_slot[{op.layer, op.micro}] = op.slot;
      continue;
    }
    if (op.kind == OpKind::chunk_landed || op.kind == OpKind::prefetch) continue;
    events.push_back(std::string(to_string(op.kind)) + " " + std::to_string(op.layer) + " " +
                     std::to_string(op.micro));
  }
  const auto at = [&](const std::string& e) {
    const auto it = std::find(events.begin(), events.end(), e);
    EXPECT_NE(it, events.end()) << e;
    return it - events.begin();
  };
  // Weights: loaded once per layer, one layer ahead, around both micro-batches.
  EXPECT_EQ(std::count_if(events.begin(), events.end(),
                          [](const std::string& e) { return e.rfind("load_weights", 0) == 0; }),
            3);
  EXPECT_LT(at("load_weights 0 0"), at("embed -1 0"));
  EXPECT_LT(at("load_weights 1 0"), at("await_weights 0 0"));
  EXPECT_LT(at("await_weights 0 0"), at("project 0 0"));
  EXPECT_LT(at("finish_layer 0 1"), at("release_weights 0 0"));
  EXPECT_LT(at("release_weights 0 0"), at("load_weights 2 0"));
  EXPECT_LT(at("load_weights 2 0"), at("await_weights 1 0"));
  // Every layer runs per micro-batch, in order; units alternate slots.
  for (int layer = 0; layer < 3; ++layer) {
    const std::string l = std::to_string(layer);
    EXPECT_LT(at("project " + l + " 0"), at("attend " + l + " 0"));
    EXPECT_LT(at("finish_layer " + l + " 0"), at("project " + l + " 1"));
    EXPECT_LT(at("attend " + l + " 1"), at("finish_layer " + l + " 1"));
    EXPECT_EQ(fetch_slot[std::make_pair(layer, 0)], (2 * layer) % 2);
    EXPECT_EQ(fetch_slot[std::make_pair(layer, 1)], (2 * layer + 1) % 2);
  }
  // The fetch of unit u + 2 waits for unit u's release.
  EXPECT_LT(at("release_slot 0 0"), at("await_slot 1 0"));
  EXPECT_LT(at("release_slot 0 1"), at("await_slot 1 1"));

  // One micro-batch and resident weights: exactly the latency schedule.
  ScheduleShape latency{3, 16, {40, 7, 20}, {20, 3, 0}, 16, false};
  ScheduleShape one = latency;
  one.micro = {3};
  const auto a = ops_of(DecodeSchedule(latency));
  const auto b = ops_of(DecodeSchedule(one));
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].kind, b[i].kind);
    EXPECT_EQ(a[i].slot, b[i].slot);
    EXPECT_EQ(a[i].layer, b[i].layer);
    EXPECT_EQ(a[i].micro, b[i].micro);
    EXPECT_EQ(a[i].seq, b[i].seq);
    EXPECT_EQ(a[i].chunk, b[i].chunk);
    EXPECT_EQ(a[i].t0, b[i].t0);
    EXPECT_EQ(a[i].row, b[i].row);
    EXPECT_EQ(a[i].n, b[i].n);
  }
}

TEST(DecodeSchedule, RejectsInconsistentShapes) {
  EXPECT_THROW(DecodeSchedule({0, 16, {1}, {0}, 64, false}), Error);
  EXPECT_THROW(DecodeSchedule({1, 0, {1}, {0}, 64, false}), Error);
  EXPECT_THROW(DecodeSchedule({1, 16, {1, 2}, {0}, 64, false}), Error);
  EXPECT_THROW(DecodeSchedule({1, 16, {}, {}, 64, false}), Error);
  EXPECT_THROW(DecodeSchedule({1, 16, {-1}, {0}, 64, false}), Error);
  EXPECT_THROW(DecodeSchedule({1, 16, {4}, {0}, 0, false}), Error);
  EXPECT_THROW(DecodeSchedule({1, 16, {4, 4}, {0, 0}, 16, false, {}, {1}}), Error);
  EXPECT_THROW(DecodeSchedule({1, 16, {4, 4}, {0, 0}, 16, false, {}, {2, 0}}), Error);
}

}  // namespace
}  // namespace kvpr::planner
