// The effective sharing domain of a container (spec.hpp, scope_domain();
// docs/hardening.md, "Who chooses the domain").
#include <algorithm>

#include "upm/spec.hpp"

namespace upm {

bool valid_namespace(std::string_view ns) {
    if (ns.empty() || ns.size() > 63) return false;
    auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
    if (!alnum(ns.front()) || !alnum(ns.back())) return false;
    return std::all_of(ns.begin(), ns.end(), [&](char c) { return alnum(c) || c == '-'; });
}

std::optional<std::string> pod_namespace(const UpmAnnotations& ann) {
    const bool cri = ann.cri_namespace_present, crio = ann.crio_namespace_present;
    if (!cri && !crio) return std::nullopt;
    if (cri && crio && ann.cri_namespace != ann.crio_namespace) return std::string();
    const std::string& ns = cri ? ann.cri_namespace : ann.crio_namespace;
    return valid_namespace(ns) ? ns : std::string();
}

ScopedDomain scope_domain(DomainScope scope, std::string_view domain, const UpmAnnotations& ann) {
    ScopedDomain out;
    try {
        auto warn = [&](std::string message) { out.notes.push_back({Level::warn, std::move(message)}); };
        if (!valid_domain(domain)) {  // the caller checks; never pass an unchecked name on
            warn("invalid domain `" + printable(domain, 80) + "`: no domain");
            return out;
        }
        const bool cri = ann.cri_namespace_present, crio = ann.crio_namespace_present;
        if (scope == DomainScope::none || (!cri && !crio)) {
            if (scope != DomainScope::none && domain.starts_with(kScopedDomainPrefix)) {
                warn("domain `" + printable(domain, 80) + "` starts with `" + kScopedDomainPrefix +
                     "`, which the node reserves for domains scoped by a Kubernetes namespace: no domain");
                return out;
            }
            out.domain = std::string(domain);
            return out;
        }
        if (cri && crio && ann.cri_namespace != ann.crio_namespace) {
            warn(std::string("annotations `") + kAnnotationNamespaceCri + "` (`" + printable(ann.cri_namespace, 80) +
                 "`) and `" + kAnnotationNamespaceCrio + "` (`" + printable(ann.crio_namespace, 80) +
                 "`) name different namespaces: no domain");
            return out;
        }
        const std::string& ns = cri ? ann.cri_namespace : ann.crio_namespace;
        const char* key = cri ? kAnnotationNamespaceCri : kAnnotationNamespaceCrio;
        if (!valid_namespace(ns)) {
            warn(std::string("annotation `") + key + "` `" + printable(ns, 80) +
                 "` is not a namespace (a DNS label: up to 63 lowercase letters, digits or `-`): no domain");
            return out;
        }
        out.namespace_ = ns;
        if (domain.empty()) return out;
        if (domain.size() > kMaxDomainName) {  // only a policy's domain can be longer
            warn("domain `" + printable(domain, 160) + "` is longer than " + std::to_string(kMaxDomainName) +
                 " characters and cannot be scoped by namespace `" + ns + "`: no domain");
            return out;
        }
        std::string scoped = std::string(kScopedDomainPrefix) + ns + "." + std::string(domain);
        if (!valid_domain(scoped)) {  // cannot happen with the limits above; stay strict anyway
            warn("domain `" + printable(scoped, 160) + "` is not a valid domain: no domain");
            return out;
        }
        out.domain = std::move(scoped);
    } catch (const std::exception& e) {
        out.domain.clear();
        out.notes.push_back({Level::warn, std::string("scoping the domain: ") + e.what() + ": no domain"});
    }
    return out;
}

}  // namespace upm
