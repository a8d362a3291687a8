// upm-runtime's logging: our own log file and the real runtime's log.
//
// Two spdlog sinks behind one logger:
// - the node's log file (/var/log/upm/runtime.log, `log_file` in the node
//   configuration) at the configured level, one line per message:
//   "2026-11-26T12:00:00.123456Z upm-runtime[PID] warn: container `ID`: ...";
// - the runtime log the container engine gave with --log (containerd and
//   CRI-O read it when a runtime call fails), in runc's format: with
//   --log-format json {"level":"warning","msg":"upm-runtime: ...","time":"RFC3339"},
//   else logrus text; warnings and errors only, everything with --debug.
// Both files are opened on the first message only (a pass-through call that
// has nothing to say opens nothing), with O_APPEND, and every line is one
// write(2), so concurrent runtime calls never interleave inside a line.
// Stderr is never used except for a refusal: during `create` it is the
// container's own stderr stream.
#pragma once

#include <memory>
#include <string>

#include "upm/nodeconfig.hpp"
#include "upm/spec.hpp"

namespace spdlog { class logger; }

namespace upm::runtime {

class Log {
public:
    Log(const NodeConfig& config, const RuntimeArgs& args);
    void write(Level level, const std::string& message);

private:
    std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace upm::runtime
