#include "ucx.h"

#include <atomic>
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

template <typename T>
T take(T& value) {
  return std::exchange(value, T{});
}

}  // namespace

void throw_status(const char* call, ucs_status_t status) {
  raise(is_peer_failure(status) ? ErrorKind::disconnected : ErrorKind::failed, call, ": ",
        ucs_status_string(status));
}

void check(const char* call, ucs_status_t status) {
  if (status != UCS_OK) throw_status(call, status);
}

// --- Context ---------------------------------------------------------------------------------

Context::Context(std::uint64_t features) {
  ucp_config_t* config = nullptr;
  check("ucp_config_read", ucp_config_read(nullptr, nullptr, &config));
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = features;
  params.mt_workers_shared = 0;
  const ucs_status_t status = ucp_init(&params, config, &handle_);
  ucp_config_release(config);
  check("ucp_init", status);
}

Context::~Context() {
  if (handle_ != nullptr) ucp_cleanup(handle_);
}

Context::Context(Context&& other) noexcept : handle_(take(other.handle_)) {}

Context& Context::operator=(Context&& other) noexcept {
  Context moved(std::move(other));  // releases what this held on return
  std::swap(handle_, moved.handle_);
  return *this;
}

// --- Worker ----------------------------------------------------------------------------------

Worker::Worker(const Context& context, ucs_thread_mode_t thread_mode) {
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = thread_mode;
  check("ucp_worker_create", ucp_worker_create(context.get(), &params, &handle_));
}

Worker::~Worker() {
  if (handle_ != nullptr) ucp_worker_destroy(handle_);
}

Worker::Worker(Worker&& other) noexcept : handle_(take(other.handle_)) {}

Worker& Worker::operator=(Worker&& other) noexcept {
  Worker moved(std::move(other));  // releases what this held on return
  std::swap(handle_, moved.handle_);
  return *this;
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
    ucp_worker_progress(handle_);
    if ((spins & 0xff) == 0 && std::chrono::steady_clock::now() >= deadline) {
      return UCS_ERR_TIMED_OUT;
    }
  }
}

// --- WorkerAddress ---------------------------------------------------------------------------

WorkerAddress::WorkerAddress(const Worker& worker) : worker_(worker.get()) {
  check("ucp_worker_get_address", ucp_worker_get_address(worker_, &address_, &length_));
}

WorkerAddress::~WorkerAddress() {
  if (address_ != nullptr) ucp_worker_release_address(worker_, address_);
}

WorkerAddress::WorkerAddress(WorkerAddress&& other) noexcept
    : worker_(take(other.worker_)), address_(take(other.address_)), length_(take(other.length_)) {}

WorkerAddress& WorkerAddress::operator=(WorkerAddress&& other) noexcept {
  WorkerAddress moved(std::move(other));  // releases what this held on return
  std::swap(worker_, moved.worker_);
  std::swap(address_, moved.address_);
  std::swap(length_, moved.length_);
  return *this;
}

// --- Endpoint --------------------------------------------------------------------------------

namespace {

void on_endpoint_error(void* arg, ucp_ep_h, ucs_status_t status) {
  static_cast<std::atomic<ucs_status_t>*>(arg)->store(status);
}

}  // namespace

Endpoint::Endpoint(const Worker& worker, std::span<const std::byte> peer_address)
    : worker_(worker.get()), error_(std::make_unique<std::atomic<ucs_status_t>>(UCS_OK)) {
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(peer_address.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = on_endpoint_error;
  params.err_handler.arg = error_.get();
  check("ucp_ep_create", ucp_ep_create(worker_, &params, &handle_));
}

Endpoint::~Endpoint() {
  close();
}

Endpoint::Endpoint(Endpoint&& other) noexcept
    : worker_(take(other.worker_)), handle_(take(other.handle_)), error_(std::move(other.error_)) {}

Endpoint& Endpoint::operator=(Endpoint&& other) noexcept {
  if (this != &other) {
    close();
    worker_ = take(other.worker_);
    handle_ = take(other.handle_);
    error_ = std::move(other.error_);
  }
  return *this;
}

bool Endpoint::failed() const {
  return error_ != nullptr && error_->load() != UCS_OK;
}

void Endpoint::close() {
  if (handle_ == nullptr) return;
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  params.flags = UCP_EP_CLOSE_FLAG_FORCE;
  void* request = ucp_ep_close_nbx(take(handle_), &params);
  if (request == nullptr) return;
  if (UCS_PTR_IS_ERR(request)) {
    log::warn("kvstore: ucp_ep_close_nbx: ", ucs_status_string(UCS_PTR_STATUS(request)));
    return;
  }
  // A forced close completes locally, without the peer; the bound only guards against a UCX bug.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (ucp_request_check_status(request) == UCS_INPROGRESS) {
    ucp_worker_progress(worker_);
    if (std::chrono::steady_clock::now() >= deadline) {
      log::warn("kvstore: ucp_ep_close_nbx did not complete in 2 s");
      return;  // the request stays with UCX; the worker's destruction reclaims it
    }
  }
  ucp_request_free(request);
}

// --- MemoryMap -------------------------------------------------------------------------------

MemoryMap::MemoryMap(const Context& context, std::size_t length) : context_(context.get()) {
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  params.address = nullptr;
  params.length = length;
  params.flags = UCP_MEM_MAP_ALLOCATE;
  const ucs_status_t status = ucp_mem_map(context_, &params, &handle_);
  if (status == UCS_ERR_NO_MEMORY) {
    raise(ErrorKind::overloaded, "ucp_mem_map: cannot allocate ", length,
          " bytes: ", ucs_status_string(status));
  }
  check("ucp_mem_map", status);
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  const ucs_status_t query = ucp_mem_query(handle_, &attr);
  if (query != UCS_OK) {
    ucp_mem_unmap(context_, handle_);
    throw_status("ucp_mem_query", query);
  }
  address_ = attr.address;
  length_ = attr.length;
}

MemoryMap::~MemoryMap() {
  if (handle_ == nullptr) return;
  const ucs_status_t status = ucp_mem_unmap(context_, handle_);
  if (status != UCS_OK) {
    log::warn("kvstore: ucp_mem_unmap: ", ucs_status_string(status));
  }
}

MemoryMap::MemoryMap(MemoryMap&& other) noexcept
    : context_(take(other.context_)),
      handle_(take(other.handle_)),
      address_(take(other.address_)),
      length_(take(other.length_)) {}

MemoryMap& MemoryMap::operator=(MemoryMap&& other) noexcept {
  MemoryMap moved(std::move(other));  // releases what this held on return
  std::swap(context_, moved.context_);
  std::swap(handle_, moved.handle_);
  std::swap(address_, moved.address_);
  std::swap(length_, moved.length_);
  return *this;
}

// --- RkeyBuffer ------------------------------------------------------------------------------

RkeyBuffer::RkeyBuffer(const Context& context, const MemoryMap& memory) {
  check("ucp_rkey_pack", ucp_rkey_pack(context.get(), memory.get(), &buffer_, &length_));
}

RkeyBuffer::~RkeyBuffer() {
  if (buffer_ != nullptr) ucp_rkey_buffer_release(buffer_);
}

RkeyBuffer::RkeyBuffer(RkeyBuffer&& other) noexcept
    : buffer_(take(other.buffer_)), length_(take(other.length_)) {}

RkeyBuffer& RkeyBuffer::operator=(RkeyBuffer&& other) noexcept {
  RkeyBuffer moved(std::move(other));  // releases what this held on return
  std::swap(buffer_, moved.buffer_);
  std::swap(length_, moved.length_);
  return *this;
}

// --- RemoteKey -------------------------------------------------------------------------------

RemoteKey::RemoteKey(const Endpoint& endpoint, std::span<const std::byte> packed) {
  check("ucp_ep_rkey_unpack", ucp_ep_rkey_unpack(endpoint.get(), packed.data(), &handle_));
}

RemoteKey::~RemoteKey() {
  if (handle_ != nullptr) ucp_rkey_destroy(handle_);
}

RemoteKey::RemoteKey(RemoteKey&& other) noexcept : handle_(take(other.handle_)) {}

RemoteKey& RemoteKey::operator=(RemoteKey&& other) noexcept {
  RemoteKey moved(std::move(other));  // releases what this held on return
  std::swap(handle_, moved.handle_);
  return *this;
}

void* RemoteKey::ptr(std::uint64_t remote_address) const {
  void* local = nullptr;
  if (ucp_rkey_ptr(handle_, remote_address, &local) != UCS_OK) return nullptr;
  return local;
}

}  // namespace kvpr::kvstore::ucx
