// libFuzzer target of the node agent's request parser (upm/agent_proto.hpp):
// one line from the agent's unix socket, upmd's only contact with untrusted
// bytes.  Properties checked beyond "no crash, no leak, no undefined
// behaviour" (ASan/UBSan):
// - an accepted request keeps the header's bounds: ids as
//   check_container_id() wants them, labels and cgroup paths bounded, a pid
//   in [0, kMaxAgentPid]; only well-formed JSON is accepted;
// - format_agent_request() of an accepted request parses back to the same
//   request (the client and the agent agree), and is one line;
// - agent_error_reply() of any error message is one line of valid JSON.
// Seeds: test/fuzz/corpus/agent/.  Build and run: test/fuzz/README.md.
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "fuzz_check.hpp"
#include "upm/agent_proto.hpp"

namespace {

bool same(const upm::AgentRequest& a, const upm::AgentRequest& b) {
    return a.op == b.op && a.id == b.id && a.pid == b.pid && a.cgroup == b.cgroup && a.policy == b.policy &&
           a.domain == b.domain && a.start_time == b.start_time && a.bytes == b.bytes && a.calls == b.calls &&
           a.seconds == b.seconds;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view line(reinterpret_cast<const char*>(data), size);

    auto r = upm::parse_agent_request(line);
    if (!r.ok()) {
        UPM_FUZZ_CHECK(!r.error().message.empty(), "an error says what is wrong");
        std::string reply = upm::agent_error_reply(r.error().message);
        UPM_FUZZ_CHECK(!reply.empty() && reply.back() == '\n' && reply.find('\n') == reply.size() - 1,
                       "an error reply is one line");
        UPM_FUZZ_CHECK(nlohmann::json::accept(std::string_view(reply).substr(0, reply.size() - 1)),
                       "an error reply is valid JSON");
        return 0;
    }
    UPM_FUZZ_CHECK(line.size() <= upm::kMaxAgentLine, "a request is at most kMaxAgentLine bytes");
    UPM_FUZZ_CHECK(nlohmann::json::accept(line), "only well-formed JSON is accepted");
    const upm::AgentRequest& q = *r;
    if (!q.id.empty()) UPM_FUZZ_CHECK(upm::check_container_id(q.id).empty(), "an id is a valid container id");
    UPM_FUZZ_CHECK(q.pid >= 0 && q.pid <= upm::kMaxAgentPid, "pid is in range");
    UPM_FUZZ_CHECK(q.policy.size() <= upm::kMaxAgentLabel && q.domain.size() <= upm::kMaxAgentLabel,
                   "labels are bounded");
    UPM_FUZZ_CHECK(q.cgroup.size() <= upm::kMaxAgentCgroup, "the cgroup path is bounded");

    std::string formatted = upm::format_agent_request(q);
    UPM_FUZZ_CHECK(!formatted.empty() && formatted.back() == '\n' && formatted.find('\n') == formatted.size() - 1,
                   "a formatted request is one line");
    auto again = upm::parse_agent_request(std::string_view(formatted).substr(0, formatted.size() - 1));
    UPM_FUZZ_CHECK(again.ok(), "a formatted request parses");
    UPM_FUZZ_CHECK(same(*again, q), "a formatted request parses back to the same request");
    return 0;
}
