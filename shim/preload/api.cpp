// The public C API (shim/include/upm.h).
//
// Every entry point initialises the library on first use (so it also works
// when a program links the library instead of preloading it, and from other
// libraries' constructors), catches every exception, preserves errno, and
// returns an errno value.  Advice runs on the calling thread: with the
// `upm` backend the merge happens inside the call, which is the point.
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>

#include <fmt/format.h>

#include "preload.hpp"
#include "upm.h"

#define UPM_EXPORT __attribute__((visibility("default")))

#ifndef UPM_VERSION
#define UPM_VERSION "unknown"
#endif

namespace {

int advise_one(void* addr, std::size_t len) {
    using namespace upm::preload;
    using upm::BackendKind;
    const Config& c = config();
    if (!c.active) return ENOSYS;
    const BackendKind kind = backend().kind;
    if (kind == BackendKind::none) return ENOSYS;
    auto a = reinterpret_cast<std::uintptr_t>(addr);
    if (a % page_size() != 0) return EINVAL;
    if (len == 0) return 0;
    if (a + len < a) return EINVAL;
    if (!inflight_enter()) return 0;
    int rc = upm::advise_range(kind, addr, len);
    inflight_leave();
    if (log_enabled())
        log_msg(rc ? kWarn : kDebug, fmt::format("upm_advise({}, {}): {}", addr, len, rc ? std::strerror(rc) : "ok"));
    return rc;
}

template <typename F>
int guarded(F&& f) {
    int saved = errno;
    int rc;
    try {
        rc = f();
    } catch (const std::bad_alloc&) {
        rc = ENOMEM;
    } catch (...) {
        rc = EIO;
    }
    errno = saved;
    return rc;
}

}  // namespace

extern "C" UPM_EXPORT int upm_advise(void* addr, size_t len) {
    return guarded([&] { return advise_one(addr, len); });
}

extern "C" UPM_EXPORT int upm_advise_all(void) {
    return guarded([] { return upm::preload::run_policy("api"); });
}

extern "C" UPM_EXPORT const char* upm_version(void) { return UPM_VERSION; }

extern "C" UPM_EXPORT const char* upm_backend(void) {
    try {
        return upm::preload::backend_name(upm::preload::backend().kind);
    } catch (...) {
        return "none";
    }
}
