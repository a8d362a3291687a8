// The OCI container state of a hook's stdin (include/upm/ocistate.hpp).
#include "upm/ocistate.hpp"

#include <nlohmann/json.hpp>

#include "upm/spec.hpp"
#include "upm/io.hpp"

namespace upm {

namespace {

}  // namespace

Result<ContainerState> parse_container_state(std::string_view text, bool need_pid) {
    using json = nlohmann::json;
    try {
        if (text.size() > kMaxContainerState)
            return Error::msg("more than " + std::to_string(kMaxContainerState) + " bytes");
        if (text.empty()) return Error::msg("empty");
        if (detail::json_nests_deeper(text, kMaxContainerStateDepth))
            return Error::msg("nested deeper than " + std::to_string(kMaxContainerStateDepth) + " levels");
        json doc = json::parse(text, nullptr, false);
        if (doc.is_discarded()) return Error::msg("not valid JSON");
        if (!doc.is_object()) return Error::msg("not a JSON object");
        ContainerState s;
        auto id = doc.find("id");
        if (id == doc.end() || !id->is_string()) return Error::msg("no string `id`");
        s.id = id->get<std::string>();
        if (s.id.empty() || s.id.size() > kMaxContainerId)
            return Error::msg("`id` is empty or longer than " + std::to_string(kMaxContainerId) + " bytes");
        for (unsigned char c : s.id)
            if (c < 0x20 || c == 0x7f || c == '/')
                return Error::msg("`id` `" + printable(s.id) + "` has a control character or `/`");
        auto version = doc.find("ociVersion");
        if (version != doc.end() && version->is_string()) s.oci_version = version->get<std::string>().substr(0, 64);
        auto pid = doc.find("pid");
        if (pid != doc.end() && !pid->is_null()) {
            if (!pid->is_number_integer()) return Error::msg("`pid` is not an integer");
            // is_number_integer() covers unsigned values above INT64_MAX too.
            if (pid->is_number_unsigned() && pid->get<unsigned long long>() > static_cast<unsigned long long>(kMaxContainerPid))
                return Error::msg("`pid` " + std::to_string(pid->get<unsigned long long>()) + " is out of range");
            long long v = pid->get<long long>();
            if (v < 0 || v > kMaxContainerPid) return Error::msg("`pid` " + std::to_string(v) + " is out of range");
            s.pid = static_cast<long>(v);
        }
        if (need_pid && s.pid <= 0) return Error::msg("container `" + printable(s.id) + "`: no `pid`");
        auto status = doc.find("status");
        if (status != doc.end() && status->is_string()) s.status = status->get<std::string>();
        auto bundle = doc.find("bundle");
        if (bundle != doc.end() && !bundle->is_null()) {
            if (!bundle->is_string()) return Error::msg("`bundle` is not a string");
            s.bundle = bundle->get<std::string>();
            if (s.bundle.size() > kMaxStateBundle)
                return Error::msg("`bundle` is longer than " + std::to_string(kMaxStateBundle) + " bytes");
            if (!s.bundle.empty() && (s.bundle.front() != '/' || s.bundle.find('\0') != std::string::npos))
                return Error::msg("`bundle` `" + printable(s.bundle) + "` is not an absolute path");
        }
        auto ann = doc.find("annotations");
        if (ann != doc.end() && !ann->is_null()) {
            if (!ann->is_object()) return Error::msg("`annotations` is not an object");
            auto str = [&](const char* key) -> std::string {
                auto it = ann->find(key);
                return it != ann->end() && it->is_string() ? it->get<std::string>() : std::string();
            };
            s.enabled = str(kAnnotationEnabled) == "true";
            s.policy = str(kAnnotationPolicy);
            s.domain = str(kAnnotationDomain);
            s.cri_namespace_present = ann->contains(kAnnotationNamespaceCri);
            s.cri_namespace = str(kAnnotationNamespaceCri);
            s.crio_namespace_present = ann->contains(kAnnotationNamespaceCrio);
            s.crio_namespace = str(kAnnotationNamespaceCrio);
        }
        return s;
    } catch (const std::exception& e) {
        return Error::msg(std::string("unexpected: ") + e.what());
    } catch (...) {
        return Error::msg("unexpected failure");
    }
}

}  // namespace upm
