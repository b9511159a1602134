// UniqueHandle: the one move-only owner of a C handle (a CUDA stream, a cuBLAS handle, a UCX
// worker, an allocation with its size), so that RAII owners are written as "create in the
// constructor, name the deleter" and never as a hand-written move pair.
//
// - Handle is a small value type whose default value, Handle{}, means "holds nothing" (a null
//   pointer, or a struct of them with a defaulted operator==).
// - Deleter is called as deleter(handle) once per non-null handle: when the owner dies, is
//   assigned over, or is reset. It must be noexcept (checked at compile time): a failed release
//   is logged by the deleter, never thrown, so destructors never throw. A deleter may carry state
//   (the stream a stream-ordered free belongs to, the worker an address came from); it moves with
//   the handle.
// - A moved-from owner holds nothing. Not thread-safe: one owner, one thread at a time.
#pragma once

#include <type_traits>
#include <utility>

namespace kvpr {

template <typename Handle, typename Deleter>
class UniqueHandle {
  static_assert(std::is_nothrow_invocable_v<Deleter&, Handle>,
                "a UniqueHandle deleter must be noexcept: it logs a failed release, never throws");
  static_assert(std::is_nothrow_move_constructible_v<Handle> &&
                std::is_nothrow_move_constructible_v<Deleter> &&
                std::is_nothrow_move_assignable_v<Deleter>);

 public:
  UniqueHandle() = default;
  explicit UniqueHandle(Handle handle, Deleter deleter = Deleter{}) noexcept
      : handle_(std::move(handle)), deleter_(std::move(deleter)) {}
  ~UniqueHandle() { reset(); }

  UniqueHandle(UniqueHandle&& other) noexcept
      : handle_(std::exchange(other.handle_, Handle{})), deleter_(std::move(other.deleter_)) {}
  UniqueHandle& operator=(UniqueHandle&& other) noexcept {
    if (this != &other) {
      reset(std::exchange(other.handle_, Handle{}));
      deleter_ = std::move(other.deleter_);
    }
    return *this;
  }
  UniqueHandle(const UniqueHandle&) = delete;
  UniqueHandle& operator=(const UniqueHandle&) = delete;

  const Handle& get() const noexcept { return handle_; }
  const Deleter& deleter() const noexcept { return deleter_; }
  explicit operator bool() const noexcept { return !(handle_ == Handle{}); }

  // Releases what is held (if anything), then holds `handle`.
  void reset(Handle handle = Handle{}) noexcept {
    Handle old = std::exchange(handle_, std::move(handle));
    if (!(old == Handle{})) deleter_(old);
  }
  // Gives up ownership without releasing: the caller frees the returned handle.
  [[nodiscard]] Handle release() noexcept { return std::exchange(handle_, Handle{}); }

 private:
  Handle handle_{};
  [[no_unique_address]] Deleter deleter_{};
};

}  // namespace kvpr
