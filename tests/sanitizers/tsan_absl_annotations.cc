// ThreadSanitizer annotations for Debian's prebuilt (uninstrumented) abseil synchronization.
//
// Why: libabsl_synchronization.so is built without -fsanitize=thread, so TSan cannot see the
// atomics inside absl::Mutex, absl::CondVar and absl::Notification; every access guarded by an
// absl::Mutex would look like a race (the first report is absl's Condition evaluated by the
// unlocking thread on the waiter's stack). Rebuilding abseil with TSan is the alternative; this
// file is linked into the TSan build of scheduler_test only (tests/server/CMakeLists.txt).
//
// How: the executable defines the out-of-line entry points of those classes, which interposes
// them (ENABLE_EXPORTS, so calls from inside the .so come here too); each wrapper forwards to
// the real function (dlsym RTLD_NEXT) between the __tsan_mutex_* annotations that describe the
// lock to TSan: lock = acquire, unlock = release, Await/CondVar::Wait = unlock + lock, Notify =
// release, a successful WaitForNotification = acquire. Memory accesses inside the real calls
// (absl's own state, and Condition functions evaluated on behalf of waiters) are ignored, as
// the annotations prescribe. Everything else in the program (our code, std::thread, atomics)
// is checked normally, and TSan's lock-order (deadlock) detector sees every absl::Mutex.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace {

#define NVFP4_STR2(x) #x
#define NVFP4_STR(x) NVFP4_STR2(x)

// Itanium-mangled pieces: "4absl" or "4absl7debian3", and the substitution of that namespace.
std::string MangledNs() {
#if ABSL_OPTION_USE_INLINE_NAMESPACE
  const std::string inline_ns = NVFP4_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  return "4absl" + std::to_string(inline_ns.size()) + inline_ns;
#else
  return "4absl";
#endif
}
std::string MangledSub() { return ABSL_OPTION_USE_INLINE_NAMESPACE ? "S0_" : "S_"; }
std::string MangledCond() { return "RKN" + MangledSub() + "9ConditionE"; }
std::string MangledDur() { return "N" + MangledSub() + "8DurationE"; }
std::string MangledTime() { return "N" + MangledSub() + "4TimeE"; }
std::string MangledMutexPtr() { return "PN" + MangledSub() + "5MutexE"; }

template <typename Fn>
Fn Real(const std::string& mangled) {
  void* f = dlsym(RTLD_NEXT, mangled.c_str());
  if (f == nullptr) {
    fprintf(stderr, "tsan_absl_annotations: %s not found (abseil ABI changed?)\n", mangled.c_str());
    abort();
  }
  return reinterpret_cast<Fn>(f);
}

void* Addr(const void* p) { return const_cast<void*>(p); }

// The mutex is released while waiting and held again on return.
struct WaitScope {
  explicit WaitScope(void* mu, unsigned flags = 0) : mu(mu), flags(flags) {
    __tsan_mutex_pre_unlock(mu, flags);
    __tsan_mutex_post_unlock(mu, flags);
    __tsan_mutex_pre_lock(mu, flags);
  }
  ~WaitScope() { __tsan_mutex_post_lock(mu, flags, 0); }
  void* mu;
  unsigned flags;
};

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static const auto real = Real<void (*)(Mutex*)>("_ZN" + MangledNs() + "5Mutex4LockEv");
  __tsan_mutex_pre_lock(this, 0);
  real(this);
  __tsan_mutex_post_lock(this, 0, 0);
}

void Mutex::ReaderLock() {
  static const auto real = Real<void (*)(Mutex*)>("_ZN" + MangledNs() + "5Mutex10ReaderLockEv");
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}

bool Mutex::TryLock() {
  static const auto real = Real<bool (*)(Mutex*)>("_ZN" + MangledNs() + "5Mutex7TryLockEv");
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool ok = real(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_try_lock | (ok ? 0 : __tsan_mutex_try_lock_failed), 0);
  return ok;
}

bool Mutex::ReaderTryLock() {
  static const auto real = Real<bool (*)(Mutex*)>("_ZN" + MangledNs() + "5Mutex13ReaderTryLockEv");
  const unsigned flags = __tsan_mutex_read_lock | __tsan_mutex_try_lock;
  __tsan_mutex_pre_lock(this, flags);
  const bool ok = real(this);
  __tsan_mutex_post_lock(this, flags | (ok ? 0 : __tsan_mutex_try_lock_failed), 0);
  return ok;
}

void Mutex::Unlock() {
  static const auto real = Real<void (*)(Mutex*)>("_ZN" + MangledNs() + "5Mutex6UnlockEv");
  __tsan_mutex_pre_unlock(this, 0);
  real(this);
  __tsan_mutex_post_unlock(this, 0);
}

void Mutex::ReaderUnlock() {
  static const auto real = Real<void (*)(Mutex*)>("_ZN" + MangledNs() + "5Mutex12ReaderUnlockEv");
  __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

void Mutex::LockWhen(const Condition& cond) {
  static const auto real = Real<void (*)(Mutex*, const Condition&)>(
      "_ZN" + MangledNs() + "5Mutex8LockWhenE" + MangledCond());
  __tsan_mutex_pre_lock(this, 0);
  real(this, cond);
  __tsan_mutex_post_lock(this, 0, 0);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Duration)>(
      "_ZN" + MangledNs() + "5Mutex19LockWhenWithTimeoutE" + MangledCond() + MangledDur());
  __tsan_mutex_pre_lock(this, 0);
  const bool ok = real(this, cond, timeout);
  __tsan_mutex_post_lock(this, 0, 0);
  return ok;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "_ZN" + MangledNs() + "5Mutex20LockWhenWithDeadlineE" + MangledCond() + MangledTime());
  __tsan_mutex_pre_lock(this, 0);
  const bool ok = real(this, cond, deadline);
  __tsan_mutex_post_lock(this, 0, 0);
  return ok;
}

void Mutex::Await(const Condition& cond) {
  static const auto real = Real<void (*)(Mutex*, const Condition&)>(
      "_ZN" + MangledNs() + "5Mutex5AwaitE" + MangledCond());
  WaitScope wait(this);
  real(this, cond);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Duration)>(
      "_ZN" + MangledNs() + "5Mutex16AwaitWithTimeoutE" + MangledCond() + MangledDur());
  WaitScope wait(this);
  return real(this, cond, timeout);
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "_ZN" + MangledNs() + "5Mutex17AwaitWithDeadlineE" + MangledCond() + MangledTime());
  WaitScope wait(this);
  return real(this, cond, deadline);
}

void CondVar::Wait(Mutex* mu) {
  static const auto real =
      Real<void (*)(CondVar*, Mutex*)>("_ZN" + MangledNs() + "7CondVar4WaitE" + MangledMutexPtr());
  WaitScope wait(mu);
  real(this, mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  static const auto real = Real<bool (*)(CondVar*, Mutex*, absl::Duration)>(
      "_ZN" + MangledNs() + "7CondVar15WaitWithTimeoutE" + MangledMutexPtr() + MangledDur());
  WaitScope wait(mu);
  return real(this, mu, timeout);
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  static const auto real = Real<bool (*)(CondVar*, Mutex*, absl::Time)>(
      "_ZN" + MangledNs() + "7CondVar16WaitWithDeadlineE" + MangledMutexPtr() + MangledTime());
  WaitScope wait(mu);
  return real(this, mu, deadline);
}

void Notification::Notify() {
  static const auto real =
      Real<void (*)(Notification*)>("_ZN" + MangledNs() + "12Notification6NotifyEv");
  __tsan_release(this);
  real(this);
}

void Notification::WaitForNotification() const {
  static const auto real = Real<void (*)(const Notification*)>(
      "_ZNK" + MangledNs() + "12Notification19WaitForNotificationEv");
  real(this);
  __tsan_acquire(Addr(this));
}

bool Notification::WaitForNotificationWithTimeout(absl::Duration timeout) const {
  static const auto real = Real<bool (*)(const Notification*, absl::Duration)>(
      "_ZNK" + MangledNs() + "12Notification30WaitForNotificationWithTimeoutE" + MangledDur());
  const bool notified = real(this, timeout);
  if (notified) __tsan_acquire(Addr(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(absl::Time deadline) const {
  static const auto real = Real<bool (*)(const Notification*, absl::Time)>(
      "_ZNK" + MangledNs() + "12Notification31WaitForNotificationWithDeadlineE" + MangledTime());
  const bool notified = real(this, deadline);
  if (notified) __tsan_acquire(Addr(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
