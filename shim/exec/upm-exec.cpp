// upm-exec: the container's first process under a policy that asks for a
// layout (docs/hardening.md).  upm-runtime makes it process.args[0]:
//
//   /dev/upm/upm-exec [-R] [-s BYTES] -- ORIGINAL ARGS...
//
//   -R        personality(ADDR_NO_RANDOMIZE): the next exec, and every exec of
//             its descendants, is laid out without randomisation (the flag is
//             inherited across fork and exec, and cleared by the kernel on a
//             setuid/setgid/file-capability exec, PER_CLEAR_ON_SETID)
//   -s BYTES  soft RLIMIT_STACK for the exec (moves the mmap base: the
//             per-domain layout); the value the process had is exported as
//             UPM_STACK_RLIMIT, from which the preload restores glibc's
//             default thread stack size
//
// then execvp()s the original args with the environment unchanged (PATH
// lookup as runc does it).  It fails open: when a setting cannot be applied
// it says so on stderr and execs anyway; only a failing exec ends it (exit
// 127, or 126 when the program is not executable, as a shell would).
// Statically linked, reads nothing and writes nothing but stderr: it runs in
// images we do not control.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <unistd.h>

namespace {

void warn(const char* what, int err) {
    // One write: concurrent output of other processes does not interleave.
    char line[256];
    int n = snprintf(line, sizeof line, "upm-exec: %s: %s (continuing without it)\n", what, strerror(err));
    if (n > 0) (void)!write(STDERR_FILENO, line, static_cast<size_t>(n) < sizeof line ? static_cast<size_t>(n) : sizeof line - 1);
}

}  // namespace

int main(int argc, char** argv) {
    bool no_randomize = false;
    unsigned long long stack = 0;
    int i = 1;
    for (; i < argc; ++i) {
        if (strcmp(argv[i], "--") == 0) {
            ++i;
            break;
        }
        if (strcmp(argv[i], "-R") == 0) {
            no_randomize = true;
        } else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) {
            char* end = nullptr;
            errno = 0;
            stack = strtoull(argv[++i], &end, 10);
            if (errno != 0 || !end || *end != '\0') {
                warn("invalid -s value", EINVAL);
                stack = 0;
            }
        } else {
            break;  // not ours: the program starts here (no `--`)
        }
    }
    if (i >= argc) {
        static const char usage[] = "usage: upm-exec [-R] [-s BYTES] -- PROGRAM [ARGS...]\n";
        (void)!write(STDERR_FILENO, usage, sizeof usage - 1);
        return 127;
    }
    if (stack != 0) {
        struct rlimit old {};
        if (getrlimit(RLIMIT_STACK, &old) != 0) {
            warn("getrlimit(RLIMIT_STACK)", errno);
        } else {
            struct rlimit lim = old;
            lim.rlim_cur = stack;
            if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < lim.rlim_cur) lim.rlim_max = lim.rlim_cur;
            if (setrlimit(RLIMIT_STACK, &lim) != 0) {
                warn("raising RLIMIT_STACK for the per-domain layout", errno);
                no_randomize = false;   // ASLR off without the domain's offset would be `fixed`: keep ASLR
            } else if (!secure_getenv("UPM_STACK_RLIMIT")) {
                char v[32];
                if (old.rlim_cur == RLIM_INFINITY)
                    snprintf(v, sizeof v, "unlimited");
                else
                    snprintf(v, sizeof v, "%llu", static_cast<unsigned long long>(old.rlim_cur));
                setenv("UPM_STACK_RLIMIT", v, 1);
            }
        }
    }
    if (no_randomize) {
        int cur = personality(0xffffffff);
        if (cur == -1 || personality(static_cast<unsigned long>(cur) | ADDR_NO_RANDOMIZE) == -1)
            warn("personality(ADDR_NO_RANDOMIZE)", errno);
    }
    execvp(argv[i], argv + i);
    int e = errno;
    char line[512];
    int n = snprintf(line, sizeof line, "upm-exec: cannot execute `%s`: %s\n", argv[i], strerror(e));
    if (n > 0) (void)!write(STDERR_FILENO, line, static_cast<size_t>(n) < sizeof line ? static_cast<size_t>(n) : sizeof line - 1);
    return e == ENOENT ? 127 : 126;
}
