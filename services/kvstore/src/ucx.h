// Move-only owners of the UCX handles the kvstore daemon and its client use, in the order of a UCX
// conversation: Context -> Worker -> (WorkerAddress, MemoryMap -> RkeyBuffer) on the side that
// exports memory; Context -> Worker -> Endpoint -> RemoteKey on the side that reads and writes it.
// Owners must be destroyed in the reverse order (a RemoteKey before its Endpoint, an Endpoint
// before its Worker, everything before its Context); members declared in conversation order get
// that for free.
//
// Failures on the control path throw kvpr::Error naming the UCX call and ucs_status_string.
// Destructors never throw; a failed close is written to stderr.
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace kvpr::kvstore::ucx {

// kvpr::Error(failed or disconnected) "CALL: <ucs_status_string>".
[[noreturn]] void throw_status(const char* call, ucs_status_t status);
void check(const char* call, ucs_status_t status);

class Context {
 public:
  Context() = default;
  // features: UCP_FEATURE_* (RMA, WAKEUP).
  explicit Context(std::uint64_t features);
  ~Context();
  Context(Context&& other) noexcept;
  Context& operator=(Context&& other) noexcept;

  ucp_context_h get() const { return handle_; }

 private:
  ucp_context_h handle_ = nullptr;
};

class Worker {
 public:
  Worker() = default;
  Worker(const Context& context, ucs_thread_mode_t thread_mode);
  ~Worker();
  Worker(Worker&& other) noexcept;
  Worker& operator=(Worker&& other) noexcept;

  ucp_worker_h get() const { return handle_; }
  unsigned progress() const { return ucp_worker_progress(handle_); }
  // Progresses until request (a ucs_status_ptr_t from a *_nbx call) completes or deadline passes;
  // frees it. Returns its status, or UCS_ERR_TIMED_OUT (request still owned by UCX: the caller
  // must close the endpoint, which completes it, then call wait again).
  ucs_status_t wait(void* request, std::chrono::steady_clock::time_point deadline) const;

 private:
  ucp_worker_h handle_ = nullptr;
};

// The worker's address, for a peer to create an endpoint to it.
class WorkerAddress {
 public:
  WorkerAddress() = default;
  explicit WorkerAddress(const Worker& worker);
  ~WorkerAddress();
  WorkerAddress(WorkerAddress&& other) noexcept;
  WorkerAddress& operator=(WorkerAddress&& other) noexcept;

  std::span<const std::byte> bytes() const {
    return {reinterpret_cast<const std::byte*>(address_), length_};
  }

 private:
  ucp_worker_h worker_ = nullptr;
  ucp_address_t* address_ = nullptr;
  std::size_t length_ = 0;
};

// An endpoint to a peer worker, with peer-failure reporting: once the peer is gone, failed()
// turns true and operations complete with an error instead of hanging. Closing forces (a dead peer
// cannot acknowledge a graceful close) and progresses the worker until the close completes.
class Endpoint {
 public:
  Endpoint() = default;
  Endpoint(const Worker& worker, std::span<const std::byte> peer_address);
  ~Endpoint();
  Endpoint(Endpoint&& other) noexcept;
  Endpoint& operator=(Endpoint&& other) noexcept;

  ucp_ep_h get() const { return handle_; }
  bool failed() const;
  // Closes now (forced); pending operations complete with an error. Safe to call twice.
  void close();

 private:
  ucp_worker_h worker_ = nullptr;
  ucp_ep_h handle_ = nullptr;
  // The peer failure the error handler saw (UCS_OK: none); heap-allocated so its address, the
  // handler's argument, survives moves.
  std::unique_ptr<std::atomic<ucs_status_t>> error_;
};

// Memory mapped (and, with allocate, allocated) by UCX for remote access.
class MemoryMap {
 public:
  MemoryMap() = default;
  // Allocates length bytes with UCP_MEM_MAP_ALLOCATE: on the same host a peer maps it with
  // ucp_rkey_ptr (shared memory), elsewhere it reaches it with get/put.
  MemoryMap(const Context& context, std::size_t length);
  ~MemoryMap();
  MemoryMap(MemoryMap&& other) noexcept;
  MemoryMap& operator=(MemoryMap&& other) noexcept;

  ucp_mem_h get() const { return handle_; }
  void* address() const { return address_; }
  std::size_t length() const { return length_; }

 private:
  ucp_context_h context_ = nullptr;
  ucp_mem_h handle_ = nullptr;
  void* address_ = nullptr;
  std::size_t length_ = 0;
};

// The packed remote key of a MemoryMap, as sent to peers.
class RkeyBuffer {
 public:
  RkeyBuffer() = default;
  RkeyBuffer(const Context& context, const MemoryMap& memory);
  ~RkeyBuffer();
  RkeyBuffer(RkeyBuffer&& other) noexcept;
  RkeyBuffer& operator=(RkeyBuffer&& other) noexcept;

  std::span<const std::byte> bytes() const {
    return {static_cast<const std::byte*>(buffer_), length_};
  }

 private:
  void* buffer_ = nullptr;
  std::size_t length_ = 0;
};

// A peer's remote key unpacked on an endpoint. While it lives, a same-host mapping obtained with
// ptr() stays valid, even after the peer has exited.
class RemoteKey {
 public:
  RemoteKey() = default;
  RemoteKey(const Endpoint& endpoint, std::span<const std::byte> packed);
  ~RemoteKey();
  RemoteKey(RemoteKey&& other) noexcept;
  RemoteKey& operator=(RemoteKey&& other) noexcept;

  ucp_rkey_h get() const { return handle_; }
  // The local address of the peer's remote_address, or nullptr when this endpoint's transports
  // cannot map it (another host, or UCX_TLS without shared memory).
  void* ptr(std::uint64_t remote_address) const;

 private:
  ucp_rkey_h handle_ = nullptr;
};

}  // namespace kvpr::kvstore::ucx
