#include "ucx.h"

#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>

#include "kvpr/common/error.h"
#include "kvpr/common/log.h"

namespace kvpr::kvstore::ucx {
namespace {

bool is_peer_failure(ucs_status_t status) {
  switch (status) {
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_CANCELED:
    case UCS_ERR_REJECTED:
      return true;
    default:
      return false;
  }
}

}  // namespace

void throw_status(const char* call, ucs_status_t status) {
  raise(is_peer_failure(status) ? ErrorKind::disconnected : ErrorKind::failed, call, ": ",
        ucs_status_string(status));
}

void check(const char* call, ucs_status_t status) {
  if (status != UCS_OK) throw_status(call, status);
}

// --- Network device of an endpoint --------------------------------------------------------

namespace {

// The local address a socket towards `host` leaves from (a connected UDP socket sends nothing):
// the address itself when it is one of this host's. Empty when `host` does not resolve.
std::optional<sockaddr_storage> local_address_towards(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), "9", &hints, &found) != 0) return std::nullopt;
  std::optional<sockaddr_storage> out;
  for (const addrinfo* a = found; a != nullptr && !out; a = a->ai_next) {
    const int fd = socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t length = sizeof(local);
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) == 0) {
      out = local;
    }
    close(fd);
  }
  freeaddrinfo(found);
  return out;
}

bool same_address(const sockaddr* a, const sockaddr_storage& b) {
  if (a == nullptr || a->sa_family != b.ss_family) return false;
  if (a->sa_family == AF_INET) {
    return reinterpret_cast<const sockaddr_in*>(a)->sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in*>(&b)->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr,
                       &reinterpret_cast<const sockaddr_in6*>(&b)->sin6_addr,
                       sizeof(in6_addr)) == 0;
  }
  return false;
}

// The interface holding `address`, the loopback one when `address` is null, or the one named
// `name` when that is an interface name (ZeroMQ binds tcp://eth0:PORT); empty when none.
std::string find_interface(const sockaddr_storage* address, const std::string& name) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return {};
  std::string out;
  for (const ifaddrs* i = list; i != nullptr && out.empty(); i = i->ifa_next) {
    bool match = false;
    if (!name.empty()) {
      match = name == i->ifa_name;
    } else if (address != nullptr) {
      match = same_address(i->ifa_addr, *address);
    } else {
      match = (i->ifa_flags & IFF_LOOPBACK) != 0;
    }
    if (match) out = i->ifa_name;
  }
  freeifaddrs(list);
  return out;
}

}  // namespace

std::string net_device_for(std::string_view endpoint) {
  const auto scheme = endpoint.find("://");
  if (scheme == std::string_view::npos) return {};
  if (endpoint.substr(0, scheme) != "tcp") return find_interface(nullptr, {});  // ipc, inproc
  std::string_view host = endpoint.substr(scheme + 3);
  if (const auto semicolon = host.find(';'); semicolon != std::string_view::npos) {
    host = host.substr(semicolon + 1);  // tcp://SOURCE;DESTINATION:PORT names the peer second
  }
  const auto colon = host.rfind(':');
  if (colon == std::string_view::npos) return {};
  host = host.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const std::string name(host);
  if (name.empty() || name == "*" || name == "0.0.0.0" || name == "::") return {};  // everywhere
  if (std::string device = find_interface(nullptr, name); !device.empty()) return device;
  const auto local = local_address_towards(name);
  return local ? find_interface(&*local, {}) : std::string();
}

// --- Context ---------------------------------------------------------------------------------

Context::Context(std::uint64_t features, std::string_view endpoint) {
  ucp_config_t* config = nullptr;
  check("ucp_config_read", ucp_config_read(nullptr, nullptr, &config));
  if (!endpoint.empty() && std::getenv("UCX_NET_DEVICES") == nullptr) {
    const std::string device = net_device_for(endpoint);
    if (!device.empty()) {
      const ucs_status_t modified = ucp_config_modify(config, "NET_DEVICES", device.c_str());
      if (modified != UCS_OK) ucp_config_release(config);
      check("ucp_config_modify(NET_DEVICES)", modified);
      log::debug("ucx: network transports on ", device, " only (the endpoint ", endpoint, ")");
    } else if (endpoint.find("://*:") == std::string_view::npos &&
               endpoint.find("0.0.0.0") == std::string_view::npos) {
      log::warn("ucx: no interface found for ", endpoint,
                "; UCX may listen on every interface (set UCX_NET_DEVICES)");
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = features;
  params.mt_workers_shared = 0;
  ucp_context_h context = nullptr;
  const ucs_status_t status = ucp_init(&params, config, &context);
  ucp_config_release(config);
  check("ucp_init", status);
  handle_.reset(context);
}

// --- Worker ----------------------------------------------------------------------------------

Worker::Worker(const Context& context, ucs_thread_mode_t thread_mode) {
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = thread_mode;
  ucp_worker_h worker = nullptr;
  check("ucp_worker_create", ucp_worker_create(context.get(), &params, &worker));
  handle_.reset(worker);
}

ucs_status_t Worker::wait(void* request, std::chrono::steady_clock::time_point deadline) const {
  if (request == nullptr) return UCS_OK;
  if (UCS_PTR_IS_ERR(request)) return UCS_PTR_STATUS(request);
  for (unsigned spins = 0;; ++spins) {
    const ucs_status_t status = ucp_request_check_status(request);
    if (status != UCS_INPROGRESS) {
      ucp_request_free(request);
      return status;
    }
    ucp_worker_progress(get());
    if ((spins & 0xff) == 0 && std::chrono::steady_clock::now() >= deadline) {
      return UCS_ERR_TIMED_OUT;
    }
  }
}

// --- WorkerAddress ---------------------------------------------------------------------------

WorkerAddress::WorkerAddress(const Worker& worker) {
  Address a;
  check("ucp_worker_get_address", ucp_worker_get_address(worker.get(), &a.address, &a.length));
  handle_ = UniqueHandle<Address, Release>(a, Release{worker.get()});
}

// --- Endpoint --------------------------------------------------------------------------------

namespace {

void on_endpoint_error(void* arg, ucp_ep_h, ucs_status_t status) {
  static_cast<std::atomic<ucs_status_t>*>(arg)->store(status);
}

}  // namespace

Endpoint::Endpoint(const Worker& worker, std::span<const std::byte> peer_address) {
  auto error = std::make_unique<std::atomic<ucs_status_t>>(UCS_OK);
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(peer_address.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = on_endpoint_error;
  params.err_handler.arg = error.get();
  ucp_ep_h endpoint = nullptr;
  check("ucp_ep_create", ucp_ep_create(worker.get(), &params, &endpoint));
  handle_ = UniqueHandle<ucp_ep_h, Close>(endpoint, Close{worker.get(), std::move(error)});
}

bool Endpoint::failed() const {
  const auto& error = handle_.deleter().error;
  return error != nullptr && error->load() != UCS_OK;
}

void Endpoint::Close::operator()(ucp_ep_h endpoint) const noexcept {
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  params.flags = UCP_EP_CLOSE_FLAG_FORCE;
  void* request = ucp_ep_close_nbx(endpoint, &params);
  if (request == nullptr) return;
  if (UCS_PTR_IS_ERR(request)) {
    log::warn("kvstore: ucp_ep_close_nbx: ", ucs_status_string(UCS_PTR_STATUS(request)));
    return;
  }
  // A forced close completes locally, without the peer; the bound only guards against a UCX bug.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (ucp_request_check_status(request) == UCS_INPROGRESS) {
    ucp_worker_progress(worker);
    if (std::chrono::steady_clock::now() >= deadline) {
      log::warn("kvstore: ucp_ep_close_nbx did not complete in 2 s");
      return;  // the request stays with UCX; the worker's destruction reclaims it
    }
  }
  ucp_request_free(request);
}

// --- MemoryMap -------------------------------------------------------------------------------

MemoryMap::MemoryMap(const Context& context, std::size_t length) {
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  params.address = nullptr;
  params.length = length;
  params.flags = UCP_MEM_MAP_ALLOCATE;
  ucp_mem_h memory = nullptr;
  const ucs_status_t status = ucp_mem_map(context.get(), &params, &memory);
  if (status == UCS_ERR_NO_MEMORY) {
    raise(ErrorKind::overloaded, "ucp_mem_map: cannot allocate ", length,
          " bytes: ", ucs_status_string(status));
  }
  check("ucp_mem_map", status);
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  const ucs_status_t query = ucp_mem_query(memory, &attr);
  if (query != UCS_OK) {
    ucp_mem_unmap(context.get(), memory);
    throw_status("ucp_mem_query", query);
  }
  handle_ = UniqueHandle<Mapping, Unmap>({memory, attr.address, attr.length}, Unmap{context.get()});
}

void MemoryMap::Unmap::operator()(const Mapping& mapping) const noexcept {
  const ucs_status_t status = ucp_mem_unmap(context, mapping.memory);
  if (status != UCS_OK) {
    log::warn("kvstore: ucp_mem_unmap: ", ucs_status_string(status));
  }
}

// --- RkeyBuffer ------------------------------------------------------------------------------

RkeyBuffer::RkeyBuffer(const Context& context, const MemoryMap& memory) {
  Packed packed;
  check("ucp_rkey_pack",
        ucp_rkey_pack(context.get(), memory.get(), &packed.buffer, &packed.length));
  handle_.reset(packed);
}

// --- RemoteKey -------------------------------------------------------------------------------

RemoteKey::RemoteKey(const Endpoint& endpoint, std::span<const std::byte> packed) {
  ucp_rkey_h rkey = nullptr;
  check("ucp_ep_rkey_unpack", ucp_ep_rkey_unpack(endpoint.get(), packed.data(), &rkey));
  handle_.reset(rkey);
}

void* RemoteKey::ptr(std::uint64_t remote_address) const {
  void* local = nullptr;
  if (ucp_rkey_ptr(get(), remote_address, &local) != UCS_OK) return nullptr;
  return local;
}

}  // namespace kvpr::kvstore::ucx
