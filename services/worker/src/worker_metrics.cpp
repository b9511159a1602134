#include "worker_metrics.h"

namespace kvpr::worker {

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry, const std::string& worker,
                             const std::string& model_name) {
  const prometheus::Labels labels{{"worker", worker}, {"model_name", model_name}};
  const auto buckets = net::latency_buckets();
  time_to_first_token = &prometheus::BuildHistogram()
                             .Name("kvpr_time_to_first_token_seconds")
                             .Help("From a request's acceptance to its first generated token")
                             .Labels(labels)
                             .Register(registry)
                             .Add({}, buckets);
  inter_token = &prometheus::BuildHistogram()
                     .Name("kvpr_inter_token_latency_seconds")
                     .Help("Time between consecutive tokens of a request")
                     .Labels(labels)
                     .Register(registry)
                     .Add({}, buckets);
  auto& step = prometheus::BuildHistogram()
                   .Name("kvpr_decode_step_seconds")
                   .Help(
                       "Decode step time by phase (transfer overlaps the compute phases; "
                       "total is wall time)")
                   .Labels(labels)
                   .Register(registry);
  step_transfer = &step.Add({{"phase", "transfer"}}, buckets);
  step_recompute = &step.Add({{"phase", "recompute"}}, buckets);
  step_attention = &step.Add({{"phase", "attention"}}, buckets);
  step_other = &step.Add({{"phase", "other"}}, buckets);
  step_idle = &step.Add({{"phase", "idle"}}, buckets);
  step_total = &step.Add({{"phase", "total"}}, buckets);
  auto& bytes = prometheus::BuildCounter()
                    .Name("kvpr_transfer_bytes_total")
                    .Help("Bytes copied between host and device by decode steps")
                    .Labels(labels)
                    .Register(registry);
  h2d_bytes = &bytes.Add({{"direction", "host_to_device"}});
  d2h_bytes = &bytes.Add({{"direction", "device_to_host"}});
  h2d_seconds =
      &prometheus::BuildCounter()
           .Name("kvpr_transfer_seconds_total")
           .Help("Seconds the copy queue was busy during decode steps (both directions share it)")
           .Labels(labels)
           .Register(registry)
           .Add({{"direction", "both"}});
  recompute_tokens = &prometheus::BuildCounter()
                          .Name("kvpr_kv_recompute_tokens_total")
                          .Help("K,V rows rebuilt from stored activations (all layers)")
                          .Labels(labels)
                          .Register(registry)
                          .Add({});
  transfer_tokens = &prometheus::BuildCounter()
                         .Name("kvpr_kv_transfer_tokens_total")
                         .Help("K,V rows fetched from host memory (all layers)")
                         .Labels(labels)
                         .Register(registry)
                         .Add({});
  tokens = &prometheus::BuildCounter()
                .Name("kvpr_generated_tokens_total")
                .Help("Tokens generated")
                .Labels(labels)
                .Register(registry)
                .Add({});
  auto& requests = prometheus::BuildCounter()
                       .Name("kvpr_requests_total")
                       .Help("Generation requests finished, by outcome")
                       .Labels(labels)
                       .Register(registry);
  requests_completed = &requests.Add({{"outcome", "completed"}});
  requests_failed = &requests.Add({{"outcome", "failed"}});
  split_ratio = &prometheus::BuildGauge()
                     .Name("kvpr_split_ratio")
                     .Help(
                         "Share of each context recomputed from activations in the last step "
                         "(l / s)")
                     .Labels(labels)
                     .Register(registry)
                     .Add({});
  predicted_step = &prometheus::BuildGauge()
                        .Name("kvpr_plan_predicted_step_seconds")
                        .Help(
                            "The last decode step's plan: its predicted time (the cost model "
                            "predicts link and recompute only; the profile scheduler the whole "
                            "step); compare with kvpr_decode_step_seconds")
                        .Labels(labels)
                        .Register(registry)
                        .Add({});
  profile_h2d = &prometheus::BuildGauge()
                     .Name("kvpr_profile_host_to_device_bytes_per_second")
                     .Help(
                         "The host-to-device rate this worker's plans assume: its measured "
                         "profile's, else the backend's nominal rate")
                     .Labels(labels)
                     .Register(registry)
                     .Add({});
  queue_depth = &prometheus::BuildGauge()
                     .Name("kvpr_worker_queue_depth")
                     .Help("Requests waiting for the executor")
                     .Labels(labels)
                     .Register(registry)
                     .Add({});
  running_sequences = &prometheus::BuildGauge()
                           .Name("kvpr_running_sequences")
                           .Help("Sequences in the decode batch")
                           .Labels(labels)
                           .Register(registry)
                           .Add({});
  waiting_sequences = &prometheus::BuildGauge()
                           .Name("kvpr_waiting_sequences")
                           .Help("Sequences waiting to join the batch (queued or preempted)")
                           .Labels(labels)
                           .Register(registry)
                           .Add({});
  preemptions = &prometheus::BuildCounter()
                     .Name("kvpr_preemptions_total")
                     .Help(
                         "Sequences taken out of the batch because the KV store filled; each "
                         "resumes later, rebuilt from its tokens")
                     .Labels(labels)
                     .Register(registry)
                     .Add({});
  cancellations = &prometheus::BuildCounter()
                       .Name("kvpr_cancellations_total")
                       .Help("Sequences stopped by their client's cancel")
                       .Labels(labels)
                       .Register(registry)
                       .Add({});
  auto& abandoned = prometheus::BuildCounter()
                        .Name("kvpr_abandoned_requests_total")
                        .Help(
                            "Requests cancelled because their client stopped reading its events "
                            "(stalled) or disconnected (gone); their sequences are freed")
                        .Labels(labels)
                        .Register(registry);
  abandoned_stalled = &abandoned.Add({{"reason", "stalled"}});
  abandoned_gone = &abandoned.Add({{"reason", "gone"}});
  request_latency = &prometheus::BuildHistogram()
                         .Name("kvpr_request_latency_seconds")
                         .Help("From a request's arrival to its last event, for finished requests")
                         .Labels(labels)
                         .Register(registry)
                         .Add({}, net::latency_buckets());
  // Exported from the start (1 and 0), also by workers that plan without a profile.
  drift_ratio = &prometheus::BuildGauge()
                     .Name("kvpr_plan_drift_ratio")
                     .Help(
                         "Measured over predicted decode-step time over the profile corrector's "
                         "last window of steps (1: the profile predicts the steps)")
                     .Labels(labels)
                     .Register(registry)
                     .Add({});
  drift_ratio->Set(1.0);
  profile_refits = &prometheus::BuildCounter()
                        .Name("kvpr_profile_refits_total")
                        .Help(
                            "Times the profile's rates were refitted from observed decode steps "
                            "because predictions drifted past the margin")
                        .Labels(labels)
                        .Register(registry)
                        .Add({});
  planner_fallbacks = &prometheus::BuildCounter()
                           .Name("kvpr_planner_fallbacks_total")
                           .Help(
                               "Plans made by the worker's own cost model because no planner "
                               "replica answered")
                           .Labels(labels)
                           .Register(registry)
                           .Add({});
}

void WorkerMetrics::observe_step(const StepStats& step) {
  step_transfer->Observe(step.times.transfer);
  step_recompute->Observe(step.times.recompute);
  step_attention->Observe(step.times.attention);
  step_other->Observe(step.times.other);
  step_idle->Observe(step.times.idle);
  step_total->Observe(step.times.total);
  h2d_bytes->Increment(static_cast<double>(step.h2d_bytes));
  d2h_bytes->Increment(static_cast<double>(step.d2h_bytes));
  h2d_seconds->Increment(step.times.transfer);
  recompute_tokens->Increment(static_cast<double>(step.recompute_tokens));
  transfer_tokens->Increment(static_cast<double>(step.transfer_tokens));
  // Policies other than kvpr have no ratio of their own: resident and recompute use all of s.
  split_ratio->Set(step.plan.ratio);
  predicted_step->Set(step.plan.predicted_step_s);
}

void WorkerMetrics::observe_drift(const ProfileCorrector& corrector, bool refitted) {
  drift_ratio->Set(corrector.ratio());
  if (!refitted) return;
  profile_refits->Increment();
  const HardwareProfile profile = corrector.profile();
  profile_h2d->Set(profile.h2d_bytes_per_s.at(kProfileLinkBytes));
}

}  // namespace kvpr::worker
