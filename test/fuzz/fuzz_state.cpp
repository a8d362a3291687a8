// libFuzzer target of the OCI container state parser (upm/ocistate.hpp):
// what a runtime writes on upm-hook's stdin, with an id and annotations
// chosen by the container's creator.  Properties checked beyond "no crash,
// no leak, no undefined behaviour" (ASan/UBSan):
// - an accepted state keeps every bound the header promises: a non-empty id
//   of at most kMaxContainerId bytes without `/` or control characters, a
//   pid in [0, kMaxContainerPid] (and > 0 when required), an absolute
//   bundle path of at most kMaxStateBundle bytes without NUL, an ociVersion
//   of at most 64 bytes;
// - only well-formed JSON is accepted (nlohmann's accept() is the oracle);
// - need_pid only ever refuses more: what it accepts is accepted without it,
//   with the same fields;
// - `enabled` is set only when the text contains the annotation's key.
// Seeds: test/fuzz/corpus/state/ (runc's and crun's real hook state).  Build
// and run: test/fuzz/README.md.
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "fuzz_check.hpp"
#include "upm/ocistate.hpp"

namespace {

bool has_control(std::string_view s) {
    for (unsigned char c : s)
        if (c < 0x20 || c == 0x7f) return true;
    return false;
}

void check_state(const upm::ContainerState& s, bool need_pid) {
    UPM_FUZZ_CHECK(!s.id.empty() && s.id.size() <= upm::kMaxContainerId, "id is 1..kMaxContainerId bytes");
    UPM_FUZZ_CHECK(s.id.find('/') == std::string::npos, "id has no `/`");
    UPM_FUZZ_CHECK(!has_control(s.id), "id has no control character");
    UPM_FUZZ_CHECK(s.pid >= 0 && s.pid <= upm::kMaxContainerPid, "pid is in range");
    UPM_FUZZ_CHECK(!need_pid || s.pid > 0, "a required pid is there");
    UPM_FUZZ_CHECK(s.bundle.empty() || (s.bundle.front() == '/' && s.bundle.size() <= upm::kMaxStateBundle &&
                                        s.bundle.find('\0') == std::string::npos),
                   "bundle is an absolute path within bounds");
    UPM_FUZZ_CHECK(s.oci_version.size() <= 64, "ociVersion is at most 64 bytes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);

    auto with_pid = upm::parse_container_state(text, true);
    auto without = upm::parse_container_state(text, false);
    if (!without.ok()) {
        UPM_FUZZ_CHECK(!with_pid.ok(), "need_pid never accepts more");
        UPM_FUZZ_CHECK(!without.error().message.empty(), "an error says what is wrong");
        return 0;
    }
    UPM_FUZZ_CHECK(nlohmann::json::accept(text), "only well-formed JSON is accepted");
    check_state(*without, false);
    UPM_FUZZ_CHECK(!without->enabled || text.find("upm.enabled") != std::string_view::npos ||
                       text.find("\\u") != std::string_view::npos,
                   "enabled only with the annotation in the text");
    if (with_pid.ok()) {
        check_state(*with_pid, true);
        UPM_FUZZ_CHECK(with_pid->id == without->id && with_pid->pid == without->pid &&
                           with_pid->bundle == without->bundle && with_pid->status == without->status &&
                           with_pid->enabled == without->enabled && with_pid->policy == without->policy &&
                           with_pid->domain == without->domain && with_pid->oci_version == without->oci_version,
                       "need_pid changes no field");
    } else {
        UPM_FUZZ_CHECK(without->pid == 0, "need_pid refuses only a missing or zero pid");
    }
    return 0;
}
