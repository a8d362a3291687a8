// libFuzzer target for what upm-runtime parses from untrusted input: a
// bundle's config.json (annotations, the edit), the runtime command line and
// the node configuration.  Properties checked beyond "no crash, no leak, no
// undefined behaviour" (ASan/UBSan):
// - an edit that succeeds is idempotent (editing the result again gives the
//   same bytes) and keeps the annotations;
// - read_upm_annotations() and edit_spec() agree on what is JSON.
// Seeds: test/fuzz/corpus/spec/.  Build and run: test/fuzz/README.md.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "upm/nodeconfig.hpp"
#include "upm/spec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);

    auto annotations = upm::read_upm_annotations(text);
    upm::SpecEdit edit{"/usr/lib/upm/libupm-preload.so", "/etc/upm/policies/default.json", "tenant-a",
                       "/usr/bin/upm-hook", 10};
    auto edited = upm::edit_spec(text, edit);
    if (edited.ok()) {
        if (!annotations.ok()) std::abort();  // edit_spec accepted what read_upm_annotations refused
        auto again = upm::edit_spec(edited->text, edit);
        if (!again.ok() || again->text != edited->text) std::abort();  // not idempotent
        auto kept = upm::read_upm_annotations(edited->text);
        if (!kept.ok() || kept->enabled != annotations->enabled || kept->policy != annotations->policy ||
            kept->domain != annotations->domain)
            std::abort();  // annotations changed
    }

    std::vector<std::string> args;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= text.size() && args.size() < 64; ++i) {
        if (i == text.size() || text[i] == '\n') {
            args.emplace_back(text.substr(start, i - start));
            start = i + 1;
        }
    }
    auto r = upm::parse_runtime_args(args);
    if (r.command_index >= static_cast<int>(args.size())) std::abort();
    if (upm::edits_bundle(r) && r.bundle.empty()) std::abort();

    (void)upm::parse_node_config(text, upm::NodeConfig{});
    (void)upm::printable(text, 64);
    return 0;
}
