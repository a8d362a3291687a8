// Parsing config.json (spec_json.hpp).
#include "spec_json.hpp"

#include <cerrno>
#include <string>

#include "upm/io.hpp"
#include "upm/spec.hpp"

namespace upm::oci {

Result<json> parse_spec(std::string_view text) {
    if (detail::json_nests_deeper(text, kMaxSpecDepth))
        return Error{EINVAL, "config.json nests deeper than " + std::to_string(kMaxSpecDepth) + " levels"};
    try {
        json doc = json::parse(text);
        if (!doc.is_object()) return Error{EINVAL, "config.json is not a JSON object"};
        return doc;
    } catch (const json::exception& e) {
        std::string what = e.what();
        auto at = what.find("] ");
        return Error{EINVAL, "config.json is not valid JSON: " + (at == std::string::npos ? what : what.substr(at + 2))};
    }
}

}  // namespace upm::oci
