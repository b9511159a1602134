#include "kvpr/planner/step_model.h"

#include <algorithm>
#include <array>
#include <limits>

#include "kvpr/common/error.h"

namespace kvpr::planner {
namespace {

// The two queues' timelines while the schedule is replayed.
class Replay {
 public:
  Replay(const HardwareProfile& profile, const StepShape& shape, const DecodeSchedule& schedule,
         const std::function<void(const PredictedSpan&)>& on_span)
      : profile_(profile), shape_(shape), on_span_(on_span) {
    const auto h = static_cast<double>(shape.h);
    const auto h_kv = static_cast<double>(shape.h_kv);
    // "other" splits between before attention (q/k/v projections) and after it (o projection,
    // FFN) by their GEMM FLOPs; each micro-batch pays the per-layer part again.
    const double pre_flops = h * (h + 2 * h_kv);
    const double post_flops =
        h * h + (shape.gated_ffn ? 3.0 : 2.0) * h * static_cast<double>(shape.ffn);
    const double pre_share = pre_flops / (pre_flops + post_flops);
    // The host scans 2·h_kv·p bytes per token on its threads; its query and partials cross the
    // link (fp32) each way.
    const double host_rate = profile.host_attn_bytes_per_s *
                             static_cast<double>(std::max<std::int64_t>(profile.host_threads, 1));
    const auto n_heads = static_cast<double>(profile.n_heads);  // partials: n_heads·(d + 2)
    for (std::int64_t g = 0; g < schedule.micro_batches(); ++g) {
      const auto gi = static_cast<std::size_t>(g);
      Micro m;
      m.first = static_cast<std::size_t>(schedule.micro_first(gi));
      m.size = static_cast<std::size_t>(schedule.micro_size(gi));
      const auto b = static_cast<double>(m.size);
      const double other_layer = profile.other_s_per_layer + profile.other_s_per_row * b;
      m.project_s = other_layer * pre_share;
      m.finish_s = other_layer - m.project_s;
      m.attention_s = profile.attention_s_per_query * b;
      double host_rows = 0;
      for (std::size_t i = m.first; i < m.first + m.size; ++i) {
        m.attention_s += profile.attention_s_per_token * static_cast<double>(schedule.m(i) + 1);
        host_rows += static_cast<double>(shape.s[i] - schedule.m(i));
      }
      m.host_s = host_rows == 0  ? 0
                 : host_rate > 0 ? host_rows * 2 * h_kv * static_cast<double>(shape.p) / host_rate
                                 : std::numeric_limits<double>::infinity();
      m.query_bytes = b * h * 4;
      m.partial_bytes = b * (h + 2 * n_heads) * 4;
      micro_.push_back(m);
    }
  }

  void operator()(const DecodeOp& op) {
    const auto p = static_cast<double>(shape_.p);
    const auto h = static_cast<double>(shape_.h);
    const auto h_kv = static_cast<double>(shape_.h_kv);
    auto& slot = slots_[static_cast<std::size_t>(std::max(op.slot, 0))];
    const Micro& micro = micro_[static_cast<std::size_t>(std::max(op.micro, 0))];
    auto& weights = weight_slots_[static_cast<std::size_t>(std::max(op.layer, 0) % 2)];
    switch (op.kind) {
      case OpKind::prefetch:
        break;  // host memory: the profile's copy rates are those of local host memory
      case OpKind::await_slot:
        copy_ = std::max(copy_, slot.free);
        break;
      case OpKind::fetch: {
        const double width = op.part == Part::act ? h : h_kv;
        copy(op, h2d(static_cast<double>(op.n) * width * p));
        break;
      }
      case OpKind::chunk_landed:
        if (op.chunk == 0) slot.chunks.clear();
        slot.chunks.push_back(copy_);
        span(op, true, copy_, copy_);
        break;
      case OpKind::kv_landed:
        slot.kv = copy_;
        span(op, true, copy_, copy_);
        break;
      case OpKind::embed:
        span(op, false, compute_, compute_);  // part of the head's and layers' measured rest
        break;
      case OpKind::project:
        busy(op, out_.other_s, micro.project_s);
        break;
      case OpKind::write_back: {
        copy_ = std::max(copy_, compute_);  // the fence: after the projection
        double t = 0;
        for (std::size_t i = 0; i < micro.size; ++i) {
          t += d2h(h * p) + d2h(h_kv * p) + d2h(h_kv * p);
        }
        copy(op, t);
        break;
      }
      case OpKind::recompute: {
        wait_for(slot.chunks.at(static_cast<std::size_t>(op.chunk)));
        const auto m = static_cast<double>(op.n);
        busy(op, out_.recompute_s, 4.0 * m * h * h_kv / profile_.recompute_flops_per_s.at(m));
        break;
      }
      case OpKind::await_kv:
        wait_for(slot.kv);
        break;
      case OpKind::attend:
        busy(op, out_.attention_s, micro.attention_s);
        break;
      case OpKind::release_slot:
        slot.free = compute_;
        break;
      case OpKind::finish_layer:
        busy(op, out_.other_s, micro.finish_s);
        break;
      case OpKind::head:
        busy(op, out_.other_s,
             profile_.head_s + profile_.head_s_per_row * static_cast<double>(shape_.s.size()));
        break;
      case OpKind::drain:
        wait_for(copy_);
        break;
      case OpKind::download_query:  // on the compute queue (decode_schedule.h)
        busy(op, out_.other_s, d2h(micro.query_bytes));
        query_landed_ = compute_;
        break;
      case OpKind::host_attend: {
        const double begin = std::max(host_, query_landed_);
        host_ = begin + micro.host_s;
        out_.host_attention_s += micro.host_s;
        if (on_span_) on_span_({op.kind, op.layer, op.chunk, false, true, begin, host_});
        break;
      }
      case OpKind::upload_partials:
        wait_for(host_);
        busy(op, out_.other_s, h2d(micro.partial_bytes));
        break;
      case OpKind::merge:
        busy(op, out_.attention_s, 0);
        break;
      case OpKind::load_weights: {
        copy_ = std::max(copy_, weights.free);
        const double t = h2d(shape_.weight_bytes);
        copy(op, t);
        out_.weights_s += t;
        weights.landed = copy_;
        break;
      }
      case OpKind::await_weights:
        wait_for(weights.landed);
        break;
      case OpKind::release_weights:
        weights.free = compute_;
        break;
    }
  }

  StepPrediction finish() {
    out_.total_s = compute_;
    return out_;
  }

 private:
  struct Slot {
    std::vector<double> chunks;  // when each activation chunk has landed
    double kv = 0;
    double free = 0;
  };
  struct WeightSlot {
    double landed = 0;
    double free = 0;
  };
  // One micro-batch's per-layer costs.
  struct Micro {
    std::size_t first = 0;
    std::size_t size = 0;
    double project_s = 0;
    double finish_s = 0;
    double attention_s = 0;
    double host_s = 0;  // one layer's host attention
    double query_bytes = 0;
    double partial_bytes = 0;
  };

  double h2d(double bytes) { return bytes / profile_.h2d_bytes_per_s.at(bytes); }
  double d2h(double bytes) { return bytes / profile_.d2h_bytes_per_s.at(bytes); }
  void copy(const DecodeOp& op, double t) {
    span(op, true, copy_, copy_ + t);
    copy_ += t;
    out_.transfer_s += t;
  }
  void busy(const DecodeOp& op, double& phase, double t) {
    span(op, false, compute_, compute_ + t);
    phase += t;
    compute_ += t;
  }
  void wait_for(double ready) {
    if (ready > compute_) {
      out_.idle_s += ready - compute_;
      compute_ = ready;
    }
  }
  void span(const DecodeOp& op, bool copy_queue, double begin, double end) {
    if (on_span_) on_span_({op.kind, op.layer, op.chunk, copy_queue, false, begin, end});
  }

  const HardwareProfile& profile_;
  const StepShape& shape_;
  const std::function<void(const PredictedSpan&)>& on_span_;
  std::vector<Micro> micro_;
  std::array<WeightSlot, 2> weight_slots_{};
  double host_ = 0;  // when the host threads finish what they were given
  double query_landed_ = 0;
  std::array<Slot, kStagingSlots> slots_{};
  double copy_ = 0;     // when the copy queue finishes what was enqueued so far
  double compute_ = 0;  // when the compute queue finishes what was enqueued so far
  StepPrediction out_;
};

}  // namespace

StepPrediction predict_step(const HardwareProfile& profile, const StepShape& shape) {
  return predict_step(profile, shape, nullptr);
}

StepPrediction predict_step(const HardwareProfile& profile, const StepShape& shape,
                            const std::function<void(const PredictedSpan&)>& on_span) {
  const DecodeSchedule schedule(shape.schedule());
  Replay replay(profile, shape, schedule, on_span);
  schedule.run([&](const DecodeOp& op) { replay(op); });
  return replay.finish();
}

}  // namespace kvpr::planner
