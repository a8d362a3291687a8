// `upm ideal [--json] [--cgroup DIR] [--classes LIST] PID...`: what merging
// every identical anonymous page of the processes would save, against the
// current state and against no merging at all.  The scan is ideal_scan.cpp;
// this file parses options and prints.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <fmt/format.h>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "ideal_scan.hpp"

namespace upm::cli {

namespace {

using json = nlohmann::ordered_json;  // fields in a readable order

struct IdealOptions {
    std::vector<int> pids;
    std::string cgroup;
    std::string classes;
    bool json = false;
    std::uint64_t max_pages = ideal::Options{}.max_pages;
};

json counters_json(const ideal::Counters& c, std::uint64_t page_size) {
    return json{
        {"anon_present_pages", c.anon_present_pages},
        {"mappings", c.mappings},
        {"distinct_contents", c.distinct_contents},
        {"zero_pages", c.zero_pages},
        {"unreadable_pages", c.unreadable_pages},
        {"ideal_resident_pages", c.ideal_resident_pages()},
        {"ideal_saved_pages", c.ideal_saved_pages()},
        {"ideal_saved_bytes", c.ideal_saved_pages() * static_cast<std::int64_t>(page_size)},
        {"ksm_pages_now", c.ksm_pages_now},
        {"unmerged_pages", c.unmerged_pages},
        {"ideal_saved_from_unmerged_pages", c.ideal_saved_from_unmerged_pages()},
        {"merged_saved_pages", c.merged_saved_pages()},
    };
}

std::vector<RegionClass> selected(unsigned mask) {
    std::vector<RegionClass> out;
    for (int c = 0; c < ideal::kClasses; ++c)
        if (mask & (1u << c)) out.push_back(static_cast<RegionClass>(c));
    return out;
}

std::string render_json(const ideal::Report& r, unsigned mask, const std::string& cgroup) {
    json j;
    j["pids"] = r.pids;
    j["page_size"] = r.page_size;
    j.update(counters_json(r.tally.total, r.page_size));
    j["cgroup"] = cgroup.empty() ? json(nullptr) : json(cgroup);
    json classes = json::array(), by_class = json::object();
    for (RegionClass c : selected(mask)) {
        classes.push_back(std::string(to_string(c)));
        by_class[std::string(to_string(c))] = counters_json(r.tally.by_class[static_cast<int>(c)], r.page_size);
    }
    j["classes"] = classes;
    j["by_class"] = by_class;
    json errors = json::array();
    for (const auto& e : r.errors) errors.push_back({{"pid", e.pid}, {"error", e.message}});
    j["errors"] = errors;
    j["kernel_zero_page_mappings"] = r.kernel_zero_page_mappings;
    j["non_anon_pages"] = r.non_anon_pages;
    j["bytes_read"] = r.bytes_read;
    j["hash"] = "xxh3-128";
    j["elapsed_s"] = std::round(r.elapsed_s * 1000) / 1000;
    return j.dump(2) + "\n";
}

std::string mib(std::int64_t pages, std::uint64_t page_size) {
    return fmt::format("{:.1f}", static_cast<double>(pages) * static_cast<double>(page_size) / (1 << 20));
}

std::string render_table(const ideal::Report& r, unsigned mask) {
    std::string out = fmt::format("{} process{} scanned, page size {}, {:.2f} s\n", r.pids.size(),
                                  r.pids.size() == 1 ? "" : "es", r.page_size, r.elapsed_s);
    out += fmt::format("{:<10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}\n", "CLASS",
                       "PRESENT", "MAPPINGS", "DISTINCT", "ZERO", "KSM_NOW", "UNMERGED", "IDEAL_RES",
                       "SAVE_NOW", "SAVE_ALL");
    auto row = [&](std::string_view name, const ideal::Counters& c) {
        out += fmt::format("{:<10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}\n", name,
                           c.anon_present_pages, c.mappings, c.distinct_contents, c.zero_pages, c.ksm_pages_now,
                           c.unmerged_pages, c.ideal_resident_pages(), c.ideal_saved_pages(),
                           c.ideal_saved_from_unmerged_pages());
    };
    for (RegionClass c : selected(mask)) row(to_string(c), r.tally.by_class[static_cast<int>(c)]);
    row("total", r.tally.total);
    const auto& t = r.tally.total;
    double frac = t.ideal_saved_from_unmerged_pages() > 0
                      ? 100.0 * static_cast<double>(t.merged_saved_pages()) /
                            static_cast<double>(t.ideal_saved_from_unmerged_pages())
                      : 0.0;
    out += fmt::format(
        "SAVE_NOW: merging every identical page would save {} MiB more than now\n"
        "SAVE_ALL: against no merging at all, the ideal saving is {} MiB; KSM saves {} MiB of it now ({:.1f}%)\n",
        mib(t.ideal_saved_pages(), r.page_size), mib(t.ideal_saved_from_unmerged_pages(), r.page_size),
        mib(t.merged_saved_pages(), r.page_size), frac);
    if (t.unreadable_pages)
        out += fmt::format("{} pages could not be read (counted as distinct)\n", t.unreadable_pages);
    return out;
}

int do_ideal(const IdealOptions& o) {
    ideal::Options opt;
    opt.max_pages = o.max_pages;
    if (!o.classes.empty()) {
        auto m = ideal::parse_classes(o.classes);
        if (!m) {
            std::fprintf(stderr, "upm ideal: --classes: %s\n", m.error().message.c_str());
            return 2;
        }
        opt.class_mask = *m;
    }
    for (int p : o.pids) opt.pids.push_back(p);
    if (!o.cgroup.empty()) {
        auto pids = ideal::cgroup_pids(o.cgroup);
        if (!pids) {
            std::fprintf(stderr, "upm ideal: --cgroup: %s\n", pids.error().message.c_str());
            return 1;
        }
        if (pids->empty()) std::fprintf(stderr, "upm ideal: no process in cgroup `%s`\n", o.cgroup.c_str());
        // Not ourselves: our own memory changes while we scan it.
        for (pid_t p : *pids)
            if (p != ::getpid()) opt.pids.push_back(p);
    }
    if (opt.pids.empty()) {
        if (o.cgroup.empty()) std::fprintf(stderr, "upm ideal: no PID and no --cgroup; usage: upm ideal [--json] [--cgroup DIR] [--classes LIST] PID...\n");
        return o.cgroup.empty() ? 2 : 1;
    }

    auto rep = ideal::scan(opt);
    if (!rep) {
        std::fprintf(stderr, "upm ideal: %s\n", rep.error().message.c_str());
        return 1;
    }
    for (const auto& e : rep->errors)
        std::fprintf(stderr, "upm ideal: process %d skipped: %s\n", static_cast<int>(e.pid), e.message.c_str());
    if (rep->pids.empty()) {
        std::fprintf(stderr, "upm ideal: no process could be read\n");
        return 1;
    }
    std::string out = o.json ? render_json(*rep, opt.class_mask, o.cgroup) : render_table(*rep, opt.class_mask);
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
}

}  // namespace

void add_ideal(CLI::App& app, Action& action) {
    auto o = std::make_shared<IdealOptions>();
    auto* cmd = app.add_subcommand(
        "ideal", "what merging every identical anonymous page of processes would save (needs root)");
    cmd->add_option("pid", o->pids, "process ids")->check(CLI::PositiveNumber);
    cmd->add_option("--cgroup", o->cgroup, "also every process of cgroup DIR and the cgroups below it")
        ->check(CLI::ExistingDirectory);
    cmd->add_option("--classes", o->classes,
                    "classes to scan, comma-separated: heap, anonymous (anon), libdata, rodata, stack, text, all "
                    "(default: all)");
    cmd->add_flag("--json", o->json, "print one JSON object (fields in docs/cli.md)");
    cmd->add_option("--max-pages", o->max_pages, "refuse to scan more present anonymous pages than this")
        ->check(CLI::PositiveNumber);
    cmd->callback([o, &action] { action = [o] { return do_ideal(*o); }; });
}

}  // namespace upm::cli
