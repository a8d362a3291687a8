// Where `upm` finds its data files (see commands.hpp).
#include <filesystem>
#include <string>

#include "commands.hpp"
#include "upm_config.hpp"

namespace upm::cli {

std::string find_data_dir(const std::string& installed, const std::string& source, const std::string& rel) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    fs::path self_dir = ec ? fs::path() : self.parent_path();
    if (!self_dir.empty() && fs::equivalent(self_dir, UPM_BUILD_BIN_DIR, ec) && fs::exists(source, ec)) return source;
    if (fs::exists(installed, ec)) return installed;
    // installed elsewhere (DESTDIR, relocated prefix): PREFIX/bin/upm -> PREFIX/share/upm/REL
    fs::path relocated = self_dir.parent_path() / "share" / "upm" / rel;
    if (!self_dir.empty() && fs::exists(relocated, ec)) return relocated.string();
    return installed;
}

}  // namespace upm::cli
