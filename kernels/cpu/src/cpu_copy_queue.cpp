// The copy thread of the CPU backend (see cpu_copy_queue.h for who shares what). Kept apart from
// the backend so the threading — FIFO, events, error capture, the emulated link — can be read and
// tested on its own, without any tensor code in the way.
#include "cpu_copy_queue.h"

#include <algorithm>
#include <utility>

#include "kvpr/common/log.h"

namespace kvpr::kernels::cpu {

void CpuEvent::complete() {
  {
    std::lock_guard lock(mutex_);
    completed_at_ = Clock::now();
    done_ = true;
  }
  done_cv_.notify_all();
}

void CpuEvent::wait() const {
  std::unique_lock lock(mutex_);
  done_cv_.wait(lock, [this] { return done_; });
}

bool CpuEvent::done() const {
  std::lock_guard lock(mutex_);
  return done_;
}

Clock::time_point CpuEvent::completed_at() const {
  std::lock_guard lock(mutex_);
  return completed_at_;
}

namespace {

// A spin-wait hint; yield() instead would give the core away for a whole time slice under load.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

void wait_until_precise(Clock::time_point deadline, bool spin) {
  constexpr auto kSpin = std::chrono::microseconds(100);
  const auto now = Clock::now();
  if (!spin) {
    if (deadline > now) std::this_thread::sleep_for(deadline - now);
    return;
  }
  if (deadline - now > kSpin) std::this_thread::sleep_for(deadline - now - kSpin);
  while (Clock::now() < deadline) cpu_relax();
}

CopyQueue::CopyQueue(LinkEmulation link) : link_(link), thread_([this] { run(); }) {}

CopyQueue::~CopyQueue() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  work_cv_.notify_all();
  try {
    if (thread_.joinable()) thread_.join();
  } catch (const std::exception& e) {
    log::error("cpu backend: joining the copy thread failed: ", e.what());
  }
  if (error_) {
    try {
      std::rethrow_exception(error_);
    } catch (const std::exception& e) {
      log::warn("cpu backend: uncollected copy error: ", e.what());
    } catch (...) {
      log::warn("cpu backend: uncollected copy error of unknown type");
    }
  }
}

void CopyQueue::push(Task task) {
  task.enqueued_at = Clock::now();
  {
    std::lock_guard lock(mutex_);
    tasks_.push_back(std::move(task));
    ++pending_;
  }
  work_cv_.notify_one();
}

void CopyQueue::enqueue_copy(CopyKind kind, std::uint64_t host_bytes, std::function<void()> work) {
  Task task;
  task.kind = TaskKind::copy;
  task.copy_kind = kind;
  task.host_bytes = host_bytes;
  task.work = std::move(work);
  push(std::move(task));
}

std::shared_ptr<CpuEvent> CopyQueue::enqueue_marker() {
  auto event = std::make_shared<CpuEvent>();
  Task task;
  task.kind = TaskKind::marker;
  task.event = event;
  push(std::move(task));
  return event;
}

void CopyQueue::enqueue_wait(std::shared_ptr<CpuEvent> event) {
  Task task;
  task.kind = TaskKind::wait;
  task.event = std::move(event);
  push(std::move(task));
}

void CopyQueue::drain() {
  {
    std::unique_lock lock(mutex_);
    idle_cv_.wait(lock, [this] { return pending_ == 0; });
  }
  rethrow_error();
}

void CopyQueue::rethrow_error() {
  std::exception_ptr error;
  {
    std::lock_guard lock(mutex_);
    error = std::exchange(error_, nullptr);
  }
  if (error) std::rethrow_exception(error);
}

void CopyQueue::count(CopyKind kind, std::uint64_t host_bytes) {
  if (kind == CopyKind::host_to_device) stats_.h2d_bytes += host_bytes;
  if (kind == CopyKind::device_to_host) stats_.d2h_bytes += host_bytes;
  ++stats_.copies;
}

void CopyQueue::count_sync_copy(CopyKind kind, std::uint64_t host_bytes) {
  std::lock_guard lock(mutex_);
  count(kind, host_bytes);
}

CopyStats CopyQueue::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

double CopyQueue::run_copy(Task& task) {
  auto start = Clock::now();
  try {
    task.work();
  } catch (...) {
    std::lock_guard lock(mutex_);
    if (!error_) error_ = std::current_exception();
  }
  if (link_.enabled() && task.copy_kind != CopyKind::device_to_device) {
    const auto ready = std::max(task.enqueued_at, link_free_at_);
    const double window_s =
        link_.latency_s +
        (link_.bytes_per_s > 0 ? static_cast<double>(task.host_bytes) / link_.bytes_per_s : 0.0);
    const auto deadline = ready + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(window_s));
    // The emulated link was busy with this copy from `ready` on, even if this thread woke later
    // (but not before the previous copy ended, so that busy intervals never overlap).
    start = std::min(start, std::max(ready, last_copy_end_));
    // Inside a run of queued copies nobody can observe this one's end before the next one's, and
    // the next window starts at this deadline however late the wake-up: sleep, and keep the core
    // free as a DMA engine would (block-sized windows are shorter than the spin, so spinning
    // through a stream of them took a whole core from the host threads). The last copy of a run
    // spins to meet its deadline precisely: an event or a waiting thread may follow it.
    bool more_copies = false;
    {
      std::lock_guard lock(mutex_);
      more_copies = !tasks_.empty() && tasks_.front().kind == TaskKind::copy;
    }
    wait_until_precise(deadline, !more_copies);
    // The next window starts at this one's ideal end, not at now(): a late wake-up or a slow
    // memcpy is caught up by later copies instead of accumulating over a stream of them.
    link_free_at_ = deadline;
  }
  last_copy_end_ = Clock::now();
  return std::chrono::duration<double>(last_copy_end_ - start).count();
}

void CopyQueue::run() {
  for (;;) {
    Task task;
    {
      std::unique_lock lock(mutex_);
      work_cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stop_ and nothing left to run
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    double busy_s = 0;
    try {
      switch (task.kind) {
        case TaskKind::copy:
          busy_s = run_copy(task);  // catches what the copy itself throws
          break;
        case TaskKind::marker:
          task.event->complete();
          break;
        case TaskKind::wait:
          task.event->wait();
          // The link idled while this queue was blocked: later copies start their window now.
          link_free_at_ = std::max(link_free_at_, Clock::now());
          break;
      }
    } catch (...) {  // only the system can fail here (a mutex); the thread must not die of it
      std::lock_guard lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    const bool was_copy = task.kind == TaskKind::copy;
    const CopyKind copy_kind = task.copy_kind;
    const std::uint64_t host_bytes = task.host_bytes;
    task = Task{};  // release the work closure and event before reporting the task finished
    bool idle = false;
    {
      std::lock_guard lock(mutex_);
      if (was_copy) {
        count(copy_kind, host_bytes);
        stats_.busy_s += busy_s;
      }
      idle = --pending_ == 0;
    }
    if (idle) idle_cv_.notify_all();
  }
}

}  // namespace kvpr::kernels::cpu
