// Shared test helpers: fixture files.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

namespace upm::test {

inline std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open fixture `" + path + "`");
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

inline std::string fixture(const std::string& rel) { return std::string(UPM_FIXTURES_DIR) + "/" + rel; }
inline std::string policy_file(const std::string& name) { return std::string(UPM_POLICIES_DIR) + "/" + name; }

}  // namespace upm::test
