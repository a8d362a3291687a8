// /proc/PID/maps and smaps parsing.
//
// A maps line is
//   START-END PERMS OFFSET MAJOR:MINOR INODE [PADDING PATH]
// with hexadecimal START, END, OFFSET, MAJOR and MINOR, decimal INODE and a
// PATH that runs to the end of the line (it may contain spaces; the kernel
// appends " (deleted)" for unlinked files).  The fixed fields are checked
// strictly, so that a truncated or foreign file is reported with its line
// number instead of producing nonsense regions.
#include "upm/maps.hpp"

#include <cerrno>

#include "upm/io.hpp"

namespace upm {

using detail::parse_uint;

std::string Region::perms() const {
    std::string p = "----";
    if (read) p[0] = 'r';
    if (write) p[1] = 'w';
    if (exec) p[2] = 'x';
    p[3] = shared ? 's' : 'p';
    return p;
}

namespace {

// Splits off the next space-delimited field (one or more spaces).
std::string_view next_field(std::string_view& rest) {
    auto b = rest.find_first_not_of(' ');
    if (b == std::string_view::npos) {
        rest = {};
        return {};
    }
    rest.remove_prefix(b);
    auto e = rest.find(' ');
    auto field = rest.substr(0, e);
    rest.remove_prefix(e == std::string_view::npos ? rest.size() : e);
    return field;
}

bool is_hex(std::string_view s) {
    if (s.empty() || s.size() > 16) return false;
    for (char c : s)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return false;
    return true;
}

// Parses one line; returns an empty string on success, else what is wrong.
std::string parse_line(std::string_view line, Region& r) {
    std::string_view rest = line;
    auto range = next_field(rest);
    auto dash = range.find('-');
    if (dash == std::string_view::npos) return "address range `" + std::string(range) + "` has no `-`";
    auto start = range.substr(0, dash), end = range.substr(dash + 1);
    if (!is_hex(start) || !is_hex(end)) return "address range `" + std::string(range) + "` is not hexadecimal";
    r.start = *parse_uint(start, 16);
    r.end = *parse_uint(end, 16);
    if (r.end <= r.start) return "address range `" + std::string(range) + "` is empty or reversed";

    auto perms = next_field(rest);
    if (perms.size() != 4 || (perms[0] != 'r' && perms[0] != '-') || (perms[1] != 'w' && perms[1] != '-') ||
        (perms[2] != 'x' && perms[2] != '-') || (perms[3] != 'p' && perms[3] != 's'))
        return "permissions `" + std::string(perms) + "` are not of the form `rwxp`";
    r.read = perms[0] == 'r';
    r.write = perms[1] == 'w';
    r.exec = perms[2] == 'x';
    r.shared = perms[3] == 's';

    auto offset = next_field(rest);
    if (!is_hex(offset)) return "offset `" + std::string(offset) + "` is not hexadecimal";
    r.offset = *parse_uint(offset, 16);

    auto dev = next_field(rest);
    auto colon = dev.find(':');
    if (colon == std::string_view::npos || !is_hex(dev.substr(0, colon)) || !is_hex(dev.substr(colon + 1)) ||
        colon > 8 || dev.size() - colon - 1 > 8)
        return "device `" + std::string(dev) + "` is not of the form `major:minor`";
    r.dev_major = static_cast<unsigned>(*parse_uint(dev.substr(0, colon), 16));
    r.dev_minor = static_cast<unsigned>(*parse_uint(dev.substr(colon + 1), 16));

    auto inode = next_field(rest);
    auto ino = parse_uint(inode);
    if (!ino) return "inode `" + std::string(inode) + "` is not a decimal number";
    r.inode = *ino;

    // The path is everything after the padding; it may contain spaces.
    auto b = rest.find_first_not_of(' ');
    std::string_view path = b == std::string_view::npos ? std::string_view{} : rest.substr(b);
    constexpr std::string_view deleted = " (deleted)";
    if (path.size() > deleted.size() && path.ends_with(deleted)) {
        path.remove_suffix(deleted.size());
        r.deleted = true;
    }
    r.path.assign(path);
    return {};
}

// Calls fn(line) on each line of `text` (without its newline); the first
// error fn returns stops the walk and comes back as "line N: ERROR".
template <typename Fn>
std::string for_each_line(std::string_view text, Fn fn) {
    for (std::size_t lineno = 1; !text.empty(); ++lineno) {
        auto nl = text.find('\n');
        auto line = text.substr(0, nl);
        text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
        if (std::string err = fn(line); !err.empty()) return "line " + std::to_string(lineno) + ": " + err;
    }
    return {};
}

}  // namespace

Result<std::vector<Region>> parse_maps(std::string_view text) {
    try {
        std::vector<Region> out;
        auto err = for_each_line(text, [&](std::string_view line) {
            Region r;
            auto e = parse_line(line, r);
            if (e.empty()) out.push_back(std::move(r));
            return e;
        });
        if (!err.empty()) return Error{EINVAL, err};
        return out;
    } catch (const std::exception& e) {
        return Error::msg(std::string("parsing maps: ") + e.what());
    }
}

Result<std::vector<Region>> read_maps(pid_t pid) {
    auto path = detail::proc_dir(pid) + "/maps";
    auto text = detail::read_file(path, detail::kMaxMapsFile);
    if (!text) return text.error();
    auto regions = parse_maps(*text);
    if (!regions) return regions.error().wrap("parsing `" + path + "`");
    return regions;
}

Result<VmFlagsMap> parse_smaps_vmflags(std::string_view text) {
    try {
        VmFlagsMap out;
        std::uintptr_t current = 0;
        bool have = false;
        auto err = for_each_line(text, [&](std::string_view line) -> std::string {
            // A VMA header starts with the address range; field lines with "Name:".
            auto first = line.substr(0, line.find(' '));
            if (first.find('-') != std::string_view::npos && first.back() != ':') {
                Region r;
                auto e = parse_line(line, r);
                if (!e.empty()) return e;
                current = r.start;
                have = true;
                out[current];
            } else if (line.starts_with("VmFlags:")) {
                if (!have) return "`VmFlags` before any mapping";
                std::string_view rest = line.substr(8);
                auto& flags = out[current];
                for (auto f = next_field(rest); !f.empty(); f = next_field(rest)) flags.emplace_back(f);
            }
            return {};
        });
        if (!err.empty()) return Error{EINVAL, err};
        return out;
    } catch (const std::exception& e) {
        return Error::msg(std::string("parsing smaps: ") + e.what());
    }
}

Result<VmFlagsMap> read_smaps_vmflags(pid_t pid) {
    auto path = detail::proc_dir(pid) + "/smaps";
    auto text = detail::read_file(path, 4 * detail::kMaxMapsFile);
    if (!text) return text.error();
    auto flags = parse_smaps_vmflags(*text);
    if (!flags) return flags.error().wrap("parsing `" + path + "`");
    return flags;
}

bool has_vmflag(const VmFlagsMap& flags, std::uintptr_t start, std::string_view flag) {
    // The VMA that starts at `start` or, for a part of one (the classifier
    // splits a .bss from memory merged into its VMA), the one before it.
    auto it = flags.upper_bound(start);
    if (it == flags.begin()) return false;
    --it;
    for (const auto& f : it->second)
        if (f == flag) return true;
    return false;
}

}  // namespace upm
