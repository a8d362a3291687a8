// Layout and hash-seed settings per sharing domain; see hardening.hpp and
// docs/hardening.md.
//
// Host side only (upm run, upm-runtime): this file uses libcrypto and is
// never pulled into the preload (which references nothing of it).
// libcrypto is loaded with dlopen() the first time a per-domain value is
// derived, not linked: linking it costs every start of upm-runtime,
// upm-hook and upm about 0.7 ms of CPU (the loader relocates its 4.7 MB),
// and upm-runtime runs several times per container, nearly always without
// a per-domain setting.
#include "upm/hardening.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/personality.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/opensslv.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "upm/io.hpp"

namespace upm {

using json = nlohmann::ordered_json;

namespace {

using detail::Fd;

constexpr std::size_t kSecretBytes = 32;
constexpr std::size_t kMaxSecret = 4096;

Result<std::vector<unsigned char>> read_secret(const std::string& path) {
    Fd f(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (f.fd < 0) return Error::sys(errno, "domain secret `" + path + "`");
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) return Error::sys(errno, "domain secret `" + path + "`");
    if (!S_ISREG(st.st_mode)) return Error{EINVAL, "domain secret `" + path + "` is not a regular file"};
    if (st.st_uid != ::geteuid())
        return Error{EPERM, "domain secret `" + path + "` is owned by uid " + std::to_string(st.st_uid) +
                                ", not by the caller (uid " + std::to_string(::geteuid()) + ")"};
    if ((st.st_mode & 077) != 0)
        return Error{EPERM, "domain secret `" + path + "` may be read or written by group or others (mode " +
                                std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
                                std::to_string(st.st_mode & 7) + "): refused; `chmod 600` it"};
    if (st.st_size < static_cast<off_t>(kSecretBytes) || st.st_size > static_cast<off_t>(kMaxSecret))
        return Error{EINVAL, "domain secret `" + path + "` must hold 32 to 4096 bytes"};
    std::vector<unsigned char> key(static_cast<std::size_t>(st.st_size));
    std::size_t have = 0;
    while (have < key.size()) {
        ssize_t n = ::read(f.fd, key.data() + have, key.size() - have);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return Error::sys(n < 0 ? errno : EIO, "read domain secret `" + path + "`");
        have += static_cast<std::size_t>(n);
    }
    return key;
}

Status create_secret(const std::string& path) {
    std::string dir = detail::dirname(path);
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return Error::sys(errno, "create `" + dir + "`");
    unsigned char key[kSecretBytes];
    std::size_t got = 0;
    while (got < sizeof key) {
        ssize_t n = ::getrandom(key + got, sizeof key - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return Error::sys(errno, "getrandom");
        got += static_cast<std::size_t>(n);
    }
    std::string tmp = path + ".tmp-" + std::to_string(::getpid());
    ::unlink(tmp.c_str());  // a leftover of a crashed run of ours (same pid)
    Fd f(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (f.fd < 0) return Error::sys(errno, "create `" + tmp + "`");
    bool ok = ::fchmod(f.fd, 0600) == 0 && ::write(f.fd, key, sizeof key) == static_cast<ssize_t>(sizeof key) &&
              ::fsync(f.fd) == 0;
    int err = errno;
    ::explicit_bzero(key, sizeof key);
    if (!ok) {
        ::unlink(tmp.c_str());
        return Error::sys(err, "write `" + tmp + "`");
    }
    // link() never replaces: of two first uses, one wins and both read its secret.
    int rc = ::link(tmp.c_str(), path.c_str());
    err = errno;
    ::unlink(tmp.c_str());
    if (rc != 0 && err != EEXIST) return Error::sys(err, "create domain secret `" + path + "`");
    if (int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); d >= 0) {
        (void)::fsync(d);
        ::close(d);
    }
    return Ok{};
}

std::uint64_t first_u64(const std::array<unsigned char, 32>& d, std::size_t at = 0) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < 8; ++i) v = (v << 8) | d[at + i];
    return v;
}

bool env_has(const json& env, std::string_view name) {
    for (const auto& e : env) {
        if (!e.is_string()) continue;
        const auto& s = e.get_ref<const std::string&>();
        if (s.size() > name.size() && s.compare(0, name.size(), name) == 0 && s[name.size()] == '=') return true;
    }
    return false;
}

}  // namespace

std::string domain_secret_path() {
    const char* env = ::secure_getenv(kEnvDomainSecret);
    return env && *env ? std::string(env) : std::string(kDefaultDomainSecret);
}

Result<std::vector<unsigned char>> load_domain_secret(const std::string& path, bool create) {
    try {
        auto key = read_secret(path);
        if (key || !create || key.error().err != ENOENT) return key;
        if (auto c = create_secret(path); !c) return c.error();
        return read_secret(path);
    } catch (const std::exception& e) {
        return Error::msg(std::string("domain secret: ") + e.what());
    }
}

namespace {

// HMAC() and EVP_sha256() from the libcrypto the headers describe
// (libcrypto.so.<major>), loaded on first use and kept.
struct Libcrypto {
    decltype(&::HMAC) hmac = nullptr;
    decltype(&::EVP_sha256) sha256 = nullptr;
    std::string error;
};

const Libcrypto& libcrypto() {
    static const Libcrypto lib = [] {
        Libcrypto l;
        const std::string soname = "libcrypto.so." + std::to_string(OPENSSL_VERSION_MAJOR);
        void* h = ::dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
        if (!h) {
            const char* why = ::dlerror();
            l.error = "cannot load " + soname + " (Debian package libssl3): " + (why ? why : "unknown error");
            return l;
        }
        l.hmac = reinterpret_cast<decltype(&::HMAC)>(::dlsym(h, "HMAC"));
        l.sha256 = reinterpret_cast<decltype(&::EVP_sha256)>(::dlsym(h, "EVP_sha256"));
        if (!l.hmac || !l.sha256) l.error = soname + " has no HMAC() or EVP_sha256()";
        return l;
    }();
    return lib;
}

}  // namespace

Result<std::array<unsigned char, 32>> derive_for_domain(const std::vector<unsigned char>& secret,
                                                        std::string_view purpose, std::string_view domain) {
    try {
        std::string msg = "upm-v1";
        msg.push_back('\0');
        msg.append(purpose);
        msg.push_back('\0');
        msg.append(domain);
        const Libcrypto& crypto = libcrypto();
        if (!crypto.error.empty()) return Error{ENOSYS, crypto.error};
        std::array<unsigned char, 32> out{};
        unsigned int len = 0;
        if (!crypto.hmac(crypto.sha256(), secret.data(), static_cast<int>(secret.size()),
                    reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out.data(), &len) ||
            len != out.size())
            return Error{EIO, "HMAC-SHA256 failed (libcrypto)"};
        return out;
    } catch (const std::exception& e) {
        return Error::msg(std::string("deriving a per-domain value: ") + e.what());
    }
}

std::uint64_t layout_rlimit(const std::array<unsigned char, 32>& derived) {
    std::uint64_t k = first_u64(derived) & ((1ull << kLayoutBits) - 1);
    return kLayoutBase + k * 4096;
}

std::uint32_t python_hash_seed(const std::array<unsigned char, 32>& derived) {
    // 0 would switch Python's hash randomisation off: 1 .. 2^32-1.
    return static_cast<std::uint32_t>(1 + first_u64(derived) % 4294967295ull);
}

HardeningPlan plan_hardening(const Policy& policy, std::string_view domain) {
    HardeningPlan plan;
    try {
        const bool want_layout = policy.layout == Layout::shared_per_domain;
        const bool want_seed = policy.hash_seed == HashSeed::per_domain;
        std::vector<std::string> done;
        if (policy.layout == Layout::fixed) {
            plan.no_randomize = true;
            done.push_back("layout `fixed`");
        }
        if (want_layout || want_seed) {
            std::string what = want_layout && want_seed ? "layout `shared-per-domain` and hash seed `per-domain`"
                               : want_layout            ? "layout `shared-per-domain`"
                                                        : "hash seed `per-domain`";
            if (domain.empty()) {
                plan.problems.push_back(what + " not applied: no sharing domain (annotation `upm.domain`, "
                                               "`upm run --domain` or the policy's `domain`); the hardening stays");
            } else if (auto secret = load_domain_secret(domain_secret_path()); !secret) {
                plan.problems.push_back(what + " not applied: " + secret.error().message + "; the hardening stays");
            } else {
                if (want_layout) {
                    if (auto d = derive_for_domain(*secret, "layout", domain); d) {
                        plan.no_randomize = true;
                        plan.stack_rlimit = layout_rlimit(*d);
                        done.push_back("layout `shared-per-domain`");
                    } else {
                        plan.problems.push_back("layout `shared-per-domain` not applied: " + d.error().message);
                    }
                }
                if (want_seed) {
                    auto py = derive_for_domain(*secret, "python-hash-seed", domain);
                    auto pl = derive_for_domain(*secret, "perl-hash-seed", domain);
                    if (py && pl) {
                        plan.env.emplace_back("PYTHONHASHSEED", std::to_string(python_hash_seed(*py)));
                        char hex[17];
                        std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(first_u64(*pl)));
                        plan.env.emplace_back("PERL_HASH_SEED", std::string("0x") + hex);
                        plan.env.emplace_back("PERL_PERTURB_KEYS", "DETERMINISTIC");
                        done.push_back("hash seed `per-domain`");
                    } else {
                        plan.problems.push_back("hash seed `per-domain` not applied: " +
                                                (py ? pl.error() : py.error()).message);
                    }
                }
                ::explicit_bzero(secret->data(), secret->size());
            }
        }
        for (const auto& d : done) plan.summary += (plan.summary.empty() ? "" : ", ") + d;
    } catch (const std::exception& e) {
        plan = HardeningPlan{};
        plan.problems.push_back(std::string("hardening settings not applied: ") + e.what());
    }
    return plan;
}

Status apply_layout_to_self(const HardeningPlan& plan) {
    if (!plan.layout()) return Ok{};
    struct rlimit old {};
    if (::getrlimit(RLIMIT_STACK, &old) != 0) return Error::sys(errno, "getrlimit(RLIMIT_STACK)");
    bool rlimit_set = false;
    if (plan.stack_rlimit != 0) {
        struct rlimit lim = old;
        lim.rlim_cur = plan.stack_rlimit;
        if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < lim.rlim_cur) lim.rlim_max = lim.rlim_cur;
        if (::setrlimit(RLIMIT_STACK, &lim) != 0)
            return Error::sys(errno, "raising RLIMIT_STACK to " + std::to_string(plan.stack_rlimit) +
                                         " bytes (hard limit " +
                                         (old.rlim_max == RLIM_INFINITY ? std::string("unlimited")
                                                                        : std::to_string(old.rlim_max)) +
                                         ")");
        rlimit_set = true;
    }
    if (plan.no_randomize) {
        int cur = ::personality(0xffffffff);
        if (cur == -1 || ::personality(static_cast<unsigned long>(cur) | ADDR_NO_RANDOMIZE) == -1) {
            int e = errno;
            if (rlimit_set) (void)::setrlimit(RLIMIT_STACK, &old);
            return Error::sys(e, "personality(ADDR_NO_RANDOMIZE)");
        }
    }
    if (rlimit_set && !::secure_getenv(kEnvStackRlimit)) {
        std::string v = old.rlim_cur == RLIM_INFINITY ? "unlimited" : std::to_string(old.rlim_cur);
        ::setenv(kEnvStackRlimit, v.c_str(), 1);
    }
    return Ok{};
}

std::vector<std::string> unwrap_exec_args(const std::vector<std::string>& args) {
    if (args.empty()) return args;
    bool ours = false;
    for (const char* dir : {"/dev/upm/", "/run/upm/"})
        if (args[0] == std::string(dir) + kExecFile) ours = true;
    if (!ours) return args;
    for (std::size_t i = 1; i < args.size(); ++i)
        if (args[i] == "--") return std::vector<std::string>(args.begin() + static_cast<long>(i) + 1, args.end());
    return args;
}

Status edit_spec_hardening(json& doc, const HardeningPlan& plan, const std::string& exec_source, std::string_view dir) {
    try {
        json& process = doc["process"];
        // Undo an earlier wrapping, so that a re-edit (or a policy that no
        // longer asks for a layout) leaves the original args.
        if (process.contains("args") && process["args"].is_array()) {
            std::vector<std::string> args;
            bool strings = true;
            for (const auto& a : process["args"]) {
                if (!a.is_string()) {
                    strings = false;
                    break;
                }
                args.push_back(a.get<std::string>());
            }
            if (strings) {
                auto orig = unwrap_exec_args(args);
                if (orig.size() != args.size()) process["args"] = orig;
            }
        }
        if (doc.contains("mounts") && doc["mounts"].is_array()) {
            json kept = json::array();
            for (auto& m : doc["mounts"]) {
                bool ours = false;
                if (m.is_object() && m.contains("destination") && m["destination"].is_string())
                    for (const char* d : {"/dev/upm/", "/run/upm/"})
                        if (m["destination"] == std::string(d) + kExecFile) ours = true;
                if (!ours) kept.push_back(std::move(m));
            }
            doc["mounts"] = std::move(kept);
        }
        if (!plan.env.empty()) {
            if (!process.contains("env")) process["env"] = json::array();
            json& env = process["env"];
            if (!env.is_array()) return Error{EINVAL, "`process.env` in config.json is not an array"};
            // An entry equal to ours is ours (an earlier edit): it is moved to
            // the end again, so that a re-edit gives the same document.
            json kept = json::array();
            for (auto& e : env) {
                bool ours = false;
                for (const auto& [name, value] : plan.env)
                    if (e.is_string() && e.get_ref<const std::string&>() == name + "=" + value) ours = true;
                if (!ours) kept.push_back(std::move(e));
            }
            env = std::move(kept);
            // A group (the Perl pair) is set only when none of it is set.
            bool perl_set = env_has(env, "PERL_HASH_SEED") || env_has(env, "PERL_PERTURB_KEYS");
            for (const auto& [name, value] : plan.env) {
                if (name.starts_with("PERL_") ? perl_set : env_has(env, name)) continue;
                env.push_back(name + "=" + value);
            }
        }
        if (!exec_source.empty() && plan.layout()) {
            if (!process.contains("args") || !process["args"].is_array() || process["args"].empty())
                return Error{EINVAL, "config.json has no `process.args` to start through upm-exec"};
            std::string target = std::string(dir) + "/" + kExecFile;
            json args = json::array({target});
            if (plan.no_randomize) args.push_back("-R");
            if (plan.stack_rlimit) {
                args.push_back("-s");
                args.push_back(std::to_string(plan.stack_rlimit));
            }
            args.push_back("--");
            for (auto& a : process["args"]) args.push_back(std::move(a));
            process["args"] = std::move(args);
            json m = json::object();
            m["destination"] = target;
            m["type"] = "bind";
            m["source"] = exec_source;
            m["options"] = json::array({"bind", "ro", "nosuid", "nodev"});
            doc["mounts"].push_back(std::move(m));
        }
        return Ok{};
    } catch (const std::exception& e) {
        return Error::msg(std::string("editing config.json for the hardening settings: ") + e.what());
    }
}

}  // namespace upm
