// The CPU backend's copy engine: one thread draining a FIFO of tasks (copies, event markers, waits
// on events), so that copies really overlap the compute queue, which runs on the caller's thread.
// Private to kernels/cpu; the backend owns one CopyQueue for its whole life.
//
// Threads: any caller thread enqueues and drains; only the copy thread runs tasks. They share the
// task FIFO, the counters and the first stored error (all under mutex_) and the events (each
// guarded by its own mutex). A task that throws does not stop the queue: the first error is kept
// and rethrown, once, by the next call to rethrow_error() (the backend calls it from synchronize,
// host_wait and wait).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "kvpr/kernels/backend.h"

namespace kvpr::kernels::cpu {

using Clock = std::chrono::steady_clock;

// Completion state of one recorded point in a queue. Shared by the backend's callers (who wait on
// it and read its time) and the copy thread (which completes it); lives as long as any holder.
class CpuEvent final : public Event {
 public:
  void complete();  // any thread; stamps Clock::now() and wakes waiters
  void wait() const;
  bool done() const;
  Clock::time_point completed_at() const;  // meaningful once done()

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable done_cv_;
  bool done_ = false;
  Clock::time_point completed_at_{};
};

// A throttle that makes the copy thread behave like a link of `bytes_per_s` with `latency_s` per
// host↔device copy (device↔device copies are not throttled). The link is modelled as a pipe: a
// copy occupies it from max(when it was enqueued, when the previous copy's window ended) for
// latency + bytes/rate, and completes at the end of that window or when its data has really been
// copied, whichever is later. Back-to-back copies therefore run at the set rate exactly, with the
// copy thread's own overheads and wake-up jitter hidden inside the windows; only a memcpy slower
// than the setting makes them slower.
struct LinkEmulation {
  double bytes_per_s = 0;  // 0 = unthrottled
  double latency_s = 0;
  bool enabled() const { return bytes_per_s > 0 || latency_s > 0; }
};

enum class CopyKind { host_to_device, device_to_host, device_to_device };

// Sleeps for the bulk of the interval and spins the last ~100 µs, so a deadline is met within a
// few microseconds rather than a scheduler tick. With `spin` false it only sleeps (a wake-up may
// come a timer slack late).
void wait_until_precise(Clock::time_point deadline, bool spin = true);

class CopyQueue {
 public:
  explicit CopyQueue(LinkEmulation link);
  // Runs every task still queued (waits included), then joins the thread. Never throws; an error
  // nobody collected is written to stderr.
  ~CopyQueue();
  CopyQueue(const CopyQueue&) = delete;
  CopyQueue& operator=(const CopyQueue&) = delete;

  // --- caller threads ---
  // `work` runs on the copy thread; host_bytes is the host side's size (0 for device_to_device),
  // counted in the stats and, for host↔device copies, used by the link throttle.
  void enqueue_copy(CopyKind kind, std::uint64_t host_bytes, std::function<void()> work);
  // An event that completes when the copy thread reaches it.
  std::shared_ptr<CpuEvent> enqueue_marker();
  // Later tasks start only after `event` has completed.
  void enqueue_wait(std::shared_ptr<CpuEvent> event);
  // Blocks until every task enqueued so far has run; then rethrow_error().
  void drain();
  void rethrow_error();
  // Counts a copy that ran synchronously on a caller thread (bytes and count, no busy time).
  void count_sync_copy(CopyKind kind, std::uint64_t host_bytes);
  CopyStats stats() const;

 private:
  enum class TaskKind { copy, marker, wait };
  struct Task {
    TaskKind kind = TaskKind::marker;
    CopyKind copy_kind = CopyKind::host_to_device;
    std::uint64_t host_bytes = 0;
    std::function<void()> work;
    std::shared_ptr<CpuEvent> event;
    Clock::time_point enqueued_at{};
  };

  void push(Task task);
  void run();  // the copy thread's loop
  // Runs one copy task and its throttle; returns the seconds the copy engine was busy with it:
  // from its start on this thread, or with the link emulated from the start of its link window.
  double run_copy(Task& task);
  void count(CopyKind kind, std::uint64_t host_bytes);  // requires mutex_

  const LinkEmulation link_;
  // Touched only by the copy thread: when the emulated link's current window ends, and when the
  // last copy task finished (for busy_s).
  Clock::time_point link_free_at_{};
  Clock::time_point last_copy_end_{};

  mutable std::mutex mutex_;
  std::condition_variable work_cv_;  // copy thread waits for tasks or stop_
  std::condition_variable idle_cv_;  // drain() waits for pending_ == 0
  std::deque<Task> tasks_;
  std::uint64_t pending_ = 0;  // enqueued and not yet finished
  bool stop_ = false;
  std::exception_ptr error_;
  CopyStats stats_;

  std::thread thread_;  // last member: started once everything above exists
};

}  // namespace kvpr::kernels::cpu
