// Private to hooks/lib/oci: the one way config.json is parsed, shared by
// reading the annotations (annotations.cpp) and editing the spec
// (spec_edit.cpp).
//
// The document is parsed as nlohmann::ordered_json so that every field upm
// does not understand survives, in its order.  A cheap scan bounds the
// nesting depth before parsing, because dumping a deeply nested document
// recurses.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "upm/result.hpp"

namespace upm::oci {

using json = nlohmann::ordered_json;

// config.json as a JSON object, at most kMaxSpecDepth levels deep.
Result<json> parse_spec(std::string_view text);

}  // namespace upm::oci
