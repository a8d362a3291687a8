// upmd: the node agent of upm.  A thin CLI11 main over libupm-host's
// agent server (upm/agent_server.hpp): parses the options, sets up logging,
// optionally daemonizes, and runs the event loop.  docs/agent.md.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>
#include <string>

#include "upm/agent_server.hpp"
#include "upm/stats.hpp"
#include "upm/log.hpp"
#include "upm/log_sinks.hpp"

namespace {

// Log lines get a UTC timestamp unless journald adds its own.
void timestamp_logs() {
    if (std::getenv("JOURNAL_STREAM")) return;
    auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
    formatter->add_flag<upm::LevelFlag>('*');
    formatter->set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %n[%P] %*: %v");
    upm::logger()->set_formatter(std::move(formatter));
}

// Forks; the parent waits until the child listens (or fails) and exits with
// the matching status.  Returns the fd the child reports readiness on.
int daemonize(const std::string& log_file) {
    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) {
        std::perror("upmd: pipe");
        std::exit(1);
    }
    pid_t pid = ::fork();
    if (pid < 0) {
        std::perror("upmd: fork");
        std::exit(1);
    }
    if (pid > 0) {
        ::close(pipefd[1]);
        char buf[4] = {};
        ssize_t n;
        do n = ::read(pipefd[0], buf, sizeof buf); while (n < 0 && errno == EINTR);
        if (n > 0) std::exit(0);
        std::fprintf(stderr, "upmd: the agent did not start; see `%s`\n", log_file.c_str());
        std::exit(1);
    }
    ::close(pipefd[0]);
    ::setsid();
    if (::chdir("/") != 0) {}
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    ::mkdir(upm::detail::dirname(log_file).c_str(), 0750);   // EEXIST for "." and "/"
    int log = ::open(log_file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
    if (null >= 0) {
        ::dup2(null, STDIN_FILENO);
        ::dup2(null, STDOUT_FILENO);
    }
    ::dup2(log >= 0 ? log : null, STDERR_FILENO);
    return pipefd[1];
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"upmd: the upm node agent.  Keeps the registry of containers running with upm (fed by upm-hook\n"
                 "and `upm run`), tunes ksmd on the KSM backend (a burst when new memory is advised, idle after,\n"
                 "original settings restored on exit) and exports savings per container and for the node in\n"
                 "Prometheus text format.  Protocol and metrics: docs/agent.md.",
                 "upmd"};
    app.set_version_flag("--version", "upmd " UPM_VERSION);

    upm::agent::ServerOptions o;
    o.version = UPM_VERSION;
    o.socket = upm::agent_socket_path();
    std::string level = "info", log_file = "/var/log/upm/upmd.log";
    double textfile_interval = 15, client_timeout = 10, poll_interval = 1;
    bool foreground = false, no_tune = false;
    std::string upm_kernel = "enable";

    app.add_option("--socket", o.socket, "unix socket of the protocol (default: $UPM_AGENT_SOCKET or /run/upm/upmd.sock)")
        ->capture_default_str();
    app.add_option("--socket-group", o.socket_group, "make the socket 0660 and owned by this group (default: 0600, root only)");
    app.add_option("--state-file", o.state_file, "registry state file (default: upmd-state.json next to the socket)");
    app.add_option("--metrics-listen", o.metrics_listen,
                   "serve GET /metrics on ADDRESS:PORT (e.g. 127.0.0.1:9464; loopback only unless --metrics-any-address)");
    app.add_flag("--metrics-any-address", o.metrics_any_address, "allow a non-loopback --metrics-listen address");
    app.add_option("--textfile", o.textfile_dir, "write DIR/upmd.prom for node-exporter's textfile collector");
    app.add_option("--textfile-interval", textfile_interval, "seconds between textfile writes")
        ->check(CLI::Range(1.0, 3600.0))->capture_default_str();
    app.add_option("--max-containers", o.max_containers, "registry size limit")
        ->check(CLI::Range(1, 65536))->capture_default_str();
    app.add_option("--max-connections", o.max_connections, "open protocol (socket) connections limit")
        ->check(CLI::Range(1, 65536))->capture_default_str();
    app.add_option("--max-metrics-connections", o.max_http_connections,
                   "open /metrics connections limit (a budget of its own: slow scrapers never lock the socket out)")
        ->check(CLI::Range(1, 4096))->capture_default_str();
    app.add_option("--client-timeout", client_timeout,
                   "seconds after which a client connection that is idle, or whose request has not arrived whole, is "
                   "closed")
        ->check(CLI::Range(0.1, 3600.0))->capture_default_str();
    app.add_option("--poll-interval", poll_interval, "seconds between checks for exited containers")
        ->check(CLI::Range(0.05, 60.0))->capture_default_str();
    app.add_flag("--no-tune", no_tune, "never change ksmd's settings");
    app.add_option("--remote-rate", o.remote_rate_mib, "MiB/s at most of remote advice (`advise`, upm kernels)")
        ->check(CLI::Range(1.0, 1e6))->capture_default_str();
    app.add_option("--tuner-state-file", o.tuner_state_file,
                   "where the tuner keeps the host's original KSM settings (default /run/upm/ksm-original.json)");
    app.add_option("--upm-kernel", upm_kernel,
                   "enable: turn MADV_UPM on at start on a upm kernel (/sys/kernel/mm/upm/enabled, the node's "
                   "opt-in; docs/threat-model.md); leave: keep the node's setting")
        ->check(CLI::IsMember({"enable", "leave"}))->capture_default_str();
    app.add_option("--cgroup-root", o.cgroup_root, "where cgroups are mounted")->capture_default_str();
    app.add_option("--log-level", level, "off, error, warn, info, debug, trace")
        ->check(CLI::IsMember({"off", "error", "warn", "info", "debug", "trace"}))->capture_default_str();
    app.add_option("--log-file", log_file, "log file when running in the background (without --foreground)")
        ->capture_default_str();
    app.add_flag("--foreground", foreground, "stay in the foreground and log to stderr (systemd, containers, tests)");
    app.footer("Stop with SIGTERM or SIGINT: the state is saved and the original ksmd settings are restored.");
    CLI11_PARSE(app, argc, argv);

    o.tune = !no_tune;
    o.textfile_interval = std::chrono::milliseconds(static_cast<long long>(textfile_interval * 1000));
    o.client_timeout = std::chrono::milliseconds(static_cast<long long>(client_timeout * 1000));
    o.poll_interval = std::chrono::milliseconds(static_cast<long long>(poll_interval * 1000));
    if (::geteuid() != 0)
        std::fprintf(stderr, "upmd: warning: not running as root: other users' processes and ksmd's settings "
                             "cannot be read or changed\n");
    if (!foreground) o.ready_fd = daemonize(log_file);
    upm::setup_logging("upmd", level);
    timestamp_logs();
    if (upm_kernel == "enable") {
        auto gate = upm::enable_upm_kernel();
        if (!gate)
            spdlog::error("could not turn MADV_UPM on ({}): containers fall back to KSM; check that upmd runs as root",
                          gate.error().message);
        else if (*gate == "enabled")
            spdlog::info("MADV_UPM turned on (/sys/kernel/mm/upm/enabled = 1); --upm-kernel=leave keeps the node's "
                         "setting");
        else
            spdlog::debug("MADV_UPM: {}", *gate);
    }
    return upm::agent::run_server(o);
}
