// The upm.* annotations of a spec (spec.hpp, read_upm_annotations()).
#include "spec_json.hpp"
#include "upm/spec.hpp"

namespace upm {

using oci::parse_spec;

Result<UpmAnnotations> read_upm_annotations(std::string_view config_text) {
    auto doc = parse_spec(config_text);
    if (!doc) return doc.error();
    try {
        UpmAnnotations a;
        auto it = doc->find("annotations");
        if (it == doc->end() || !it->is_object()) return a;
        auto get = [&](const char* key, bool& present, std::string& value) {
            auto v = it->find(key);
            if (v == it->end()) return;
            present = true;
            if (v->is_string()) value = v->get<std::string>();
        };
        get(kAnnotationEnabled, a.enabled_present, a.enabled_value);
        get(kAnnotationPolicy, a.policy_present, a.policy);
        get(kAnnotationDomain, a.domain_present, a.domain);
        get(kAnnotationNamespaceCri, a.cri_namespace_present, a.cri_namespace);
        get(kAnnotationNamespaceCrio, a.crio_namespace_present, a.crio_namespace);
        auto v = it->find(kAnnotationEnabled);
        a.enabled = v != it->end() && v->is_string() && a.enabled_value == "true";
        return a;
    } catch (const std::exception& e) {
        return Error::msg(std::string("reading annotations: ") + e.what());
    }
}

}  // namespace upm
