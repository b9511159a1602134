// Move-only owners of the UCX handles the kvstore daemon and its client use, in the order of a UCX
// conversation: Context -> Worker -> (WorkerAddress, MemoryMap -> RkeyBuffer) on the side that
// exports memory; Context -> Worker -> Endpoint -> RemoteKey on the side that reads and writes it.
// Owners must be destroyed in the reverse order (a RemoteKey before its Endpoint, an Endpoint
// before its Worker, everything before its Context); members declared in conversation order get
// that for free.
//
// Failures on the control path throw kvpr::Error naming the UCX call and ucs_status_string.
// Each owner holds its handle in a UniqueHandle (kvpr/common/unique_handle.h), which makes it
// move-only and releases it through a noexcept deleter: destructors never throw; a failed close is
// written to stderr.
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvpr/common/unique_handle.h"

namespace kvpr::kvstore::ucx {

// kvpr::Error(failed or disconnected) "CALL: <ucs_status_string>".
[[noreturn]] void throw_status(const char* call, ucs_status_t status);
void check(const char* call, ucs_status_t status);

// The network interface that traffic of the ZeroMQ `endpoint` uses on this host: the one holding
// its address (a service's bind address, e.g. tcp://127.0.0.1:PORT -> "lo"), or the one a
// connection to it leaves from (a client's); the loopback interface for ipc:// and inproc://.
// Empty when the endpoint binds every interface (tcp://*:PORT, 0.0.0.0, ::) or no interface is
// found (an unresolvable host).
std::string net_device_for(std::string_view endpoint);

class Context {
 public:
  Context() = default;
  // features: UCP_FEATURE_* (RMA, WAKEUP). `endpoint`: the ZeroMQ endpoint the UCX traffic goes
  // with (the service's bind address, or the service a client connects to); UCX's network
  // transports then open their sockets on net_device_for(endpoint) only (UCX_NET_DEVICES), not
  // on every interface. An explicit UCX_NET_DEVICES in the environment wins.
  explicit Context(std::uint64_t features, std::string_view endpoint = {});

  ucp_context_h get() const { return handle_.get(); }

 private:
  struct Cleanup {
    void operator()(ucp_context_h context) const noexcept { ucp_cleanup(context); }
  };
  UniqueHandle<ucp_context_h, Cleanup> handle_;
};

class Worker {
 public:
  Worker() = default;
  Worker(const Context& context, ucs_thread_mode_t thread_mode);

  ucp_worker_h get() const { return handle_.get(); }
  unsigned progress() const { return ucp_worker_progress(get()); }
  // Progresses until request (a ucs_status_ptr_t from a *_nbx call) completes or deadline passes;
  // frees it. Returns its status, or UCS_ERR_TIMED_OUT (request still owned by UCX: the caller
  // must close the endpoint, which completes it, then call wait again).
  ucs_status_t wait(void* request, std::chrono::steady_clock::time_point deadline) const;

 private:
  struct Destroy {
    void operator()(ucp_worker_h worker) const noexcept { ucp_worker_destroy(worker); }
  };
  UniqueHandle<ucp_worker_h, Destroy> handle_;
};

// The worker's address, for a peer to create an endpoint to it.
class WorkerAddress {
 public:
  WorkerAddress() = default;
  explicit WorkerAddress(const Worker& worker);

  std::span<const std::byte> bytes() const {
    return {reinterpret_cast<const std::byte*>(handle_.get().address), handle_.get().length};
  }

 private:
  struct Address {
    ucp_address_t* address = nullptr;
    std::size_t length = 0;
    bool operator==(const Address&) const = default;
  };
  struct Release {
    ucp_worker_h worker = nullptr;
    void operator()(const Address& a) const noexcept {
      ucp_worker_release_address(worker, a.address);
    }
  };
  UniqueHandle<Address, Release> handle_;
};

// An endpoint to a peer worker, with peer-failure reporting: once the peer is gone, failed()
// turns true and operations complete with an error instead of hanging. Closing forces (a dead peer
// cannot acknowledge a graceful close) and progresses the worker until the close completes.
class Endpoint {
 public:
  Endpoint() = default;
  Endpoint(const Worker& worker, std::span<const std::byte> peer_address);

  ucp_ep_h get() const { return handle_.get(); }
  bool failed() const;
  // Closes now (forced); pending operations complete with an error. Safe to call twice.
  void close() { handle_.reset(); }

 private:
  // Closes the endpoint on its worker. Owns the peer failure the error handler saw (UCS_OK: none),
  // heap-allocated so that its address, the handler's argument, survives moves; as part of the
  // deleter it outlives every close of the endpoint it belongs to.
  struct Close {
    ucp_worker_h worker = nullptr;
    std::unique_ptr<std::atomic<ucs_status_t>> error;
    void operator()(ucp_ep_h endpoint) const noexcept;
  };
  UniqueHandle<ucp_ep_h, Close> handle_;
};

// Memory mapped (and, with allocate, allocated) by UCX for remote access.
class MemoryMap {
 public:
  MemoryMap() = default;
  // Allocates length bytes with UCP_MEM_MAP_ALLOCATE: on the same host a peer maps it with
  // ucp_rkey_ptr (shared memory), elsewhere it reaches it with get/put.
  MemoryMap(const Context& context, std::size_t length);

  ucp_mem_h get() const { return handle_.get().memory; }
  void* address() const { return handle_.get().address; }
  std::size_t length() const { return handle_.get().length; }

 private:
  struct Mapping {
    ucp_mem_h memory = nullptr;
    void* address = nullptr;
    std::size_t length = 0;
    bool operator==(const Mapping&) const = default;
  };
  struct Unmap {
    ucp_context_h context = nullptr;
    void operator()(const Mapping& mapping) const noexcept;
  };
  UniqueHandle<Mapping, Unmap> handle_;
};

// The packed remote key of a MemoryMap, as sent to peers.
class RkeyBuffer {
 public:
  RkeyBuffer() = default;
  RkeyBuffer(const Context& context, const MemoryMap& memory);

  std::span<const std::byte> bytes() const {
    return {static_cast<const std::byte*>(handle_.get().buffer), handle_.get().length};
  }

 private:
  struct Packed {
    void* buffer = nullptr;
    std::size_t length = 0;
    bool operator==(const Packed&) const = default;
  };
  struct Release {
    void operator()(const Packed& packed) const noexcept { ucp_rkey_buffer_release(packed.buffer); }
  };
  UniqueHandle<Packed, Release> handle_;
};

// A peer's remote key unpacked on an endpoint. While it lives, a same-host mapping obtained with
// ptr() stays valid, even after the peer has exited.
class RemoteKey {
 public:
  RemoteKey() = default;
  RemoteKey(const Endpoint& endpoint, std::span<const std::byte> packed);

  ucp_rkey_h get() const { return handle_.get(); }
  // The local address of the peer's remote_address, or nullptr when this endpoint's transports
  // cannot map it (another host, or UCX_TLS without shared memory).
  void* ptr(std::uint64_t remote_address) const;

 private:
  struct Destroy {
    void operator()(ucp_rkey_h rkey) const noexcept { ucp_rkey_destroy(rkey); }
  };
  UniqueHandle<ucp_rkey_h, Destroy> handle_;
};

}  // namespace kvpr::kvstore::ucx
