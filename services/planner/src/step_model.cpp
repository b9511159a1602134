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
    const auto b = static_cast<double>(shape.s.size());
    // "other" splits between before attention (q/k/v projections) and after it (o projection,
    // FFN) by their GEMM FLOPs.
    const double pre_flops = h * (h + 2 * h_kv);
    const double post_flops =
        h * h + (shape.gated_ffn ? 3.0 : 2.0) * h * static_cast<double>(shape.ffn);
    const double other_layer = profile.other_s_per_layer + profile.other_s_per_row * b;
    project_s_ = other_layer * pre_flops / (pre_flops + post_flops);
    finish_s_ = other_layer - project_s_;
    attention_s_ = profile.attention_s_per_query * b;
    double host_rows = 0;
    for (std::size_t i = 0; i < shape.s.size(); ++i) {
      attention_s_ += profile.attention_s_per_token * static_cast<double>(schedule.m(i) + 1);
      host_rows += static_cast<double>(shape.s[i] - schedule.m(i));
    }
    // The host scans 2·h_kv·p bytes per token on its threads; its query and partials cross the
    // link (fp32) each way.
    const double host_rate = profile.host_attn_bytes_per_s *
                             static_cast<double>(std::max<std::int64_t>(profile.host_threads, 1));
    host_s_ = host_rows == 0  ? 0
              : host_rate > 0 ? host_rows * 2 * h_kv * static_cast<double>(shape.p) / host_rate
                              : std::numeric_limits<double>::infinity();
    const auto n_heads = static_cast<double>(profile.n_heads);  // partials: n_heads·(d + 2)
    query_bytes_ = b * h * 4;
    partial_bytes_ = b * (h + 2 * n_heads) * 4;
  }

  void operator()(const DecodeOp& op) {
    const auto p = static_cast<double>(shape_.p);
    const auto h = static_cast<double>(shape_.h);
    const auto h_kv = static_cast<double>(shape_.h_kv);
    auto& slot = slots_[static_cast<std::size_t>(std::max(op.slot, 0))];
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
        busy(op, out_.other_s, project_s_);
        break;
      case OpKind::write_back: {
        copy_ = std::max(copy_, compute_);  // the fence: after the projection
        double t = 0;
        for (std::size_t i = 0; i < shape_.s.size(); ++i) {
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
        busy(op, out_.attention_s, attention_s_);
        break;
      case OpKind::release_slot:
        slot.free = compute_;
        break;
      case OpKind::finish_layer:
        busy(op, out_.other_s, finish_s_);
        break;
      case OpKind::head:
        busy(op, out_.other_s,
             profile_.head_s + profile_.head_s_per_row * static_cast<double>(shape_.s.size()));
        break;
      case OpKind::drain:
        wait_for(copy_);
        break;
      case OpKind::download_query:  // on the compute queue (decode_schedule.h)
        busy(op, out_.other_s, d2h(query_bytes_));
        query_landed_ = compute_;
        break;
      case OpKind::host_attend: {
        const double begin = std::max(host_, query_landed_);
        host_ = begin + host_s_;
        out_.host_attention_s += host_s_;
        if (on_span_) on_span_({op.kind, op.layer, op.chunk, false, true, begin, host_});
        break;
      }
      case OpKind::upload_partials:
        wait_for(host_);
        busy(op, out_.other_s, h2d(partial_bytes_));
        break;
      case OpKind::merge:
        busy(op, out_.attention_s, 0);
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
  double project_s_ = 0;
  double finish_s_ = 0;
  double attention_s_ = 0;
  double host_s_ = 0;  // one layer's host attention
  double query_bytes_ = 0;
  double partial_bytes_ = 0;
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
