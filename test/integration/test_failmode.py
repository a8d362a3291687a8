# SPDX-License-Identifier: GPL-2.0-or-later
"""Broken policies: fail open by default, fail closed when asked, explain why.

`upm run --policy BAD -- CMD` with on_error "open" (the default) must run
CMD exactly as without upm -- same stdout, same exit status -- and say on
stderr why nothing is deduplicated.  With on_error "closed" it must not run
CMD, exit with status 127 and give the reason.

`upm policy check` must accept every shipped policy and reject each broken
document with its location (JSON pointer, or line for syntax errors).  The
schema (config/policy.schema.json, checked with python3-jsonschema) is the
second oracle: each broken document of the table below must be invalid for
it too, and every valid variant valid, so that the C++ checker and the
published schema cannot drift apart.  `upm policy check --normalized` output
must validate against the schema and keep every value of the input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upmtest.policy import load_policy, strip_json_comments

# Each broken document: a change to default.json (None deletes the key), or
# raw text; and the location the checker must name.
BROKEN = {
    "syntax-error": ('{\n  "version": 1,\n  "classes": ["heap",, "anonymous"]\n}\n', "line 3"),
    "unknown-key": ({"bogus": True}, "/bogus"),
    "unknown-trigger-key": ({"triggers": {"start": True, "at_exit": True}}, "/triggers/at_exit"),
    "classes-not-array": ({"classes": "heap"}, "/classes"),
    "unknown-class": ({"classes": ["heap", "code"]}, "/classes/1"),
    "duplicate-class": ({"classes": ["heap", "heap"]}, "/classes"),
    "min-region-too-small": ({"min_region_kib": 1}, "/min_region_kib"),
    "negative-delay": ({"triggers": {"delays_ms": [10, -1]}}, "/triggers/delays_ms/1"),
    "interval-too-short": ({"triggers": {"periodic": {"interval_ms": 10}}}, "/triggers/periodic/interval_ms"),
    "forbidden-signal": ({"triggers": {"signal": "SIGKILL"}}, "/triggers/signal"),
    "unknown-backend": ({"backend": "fast"}, "/backend"),
    "bad-domain": ({"domain": "tenant a!"}, "/domain"),
    "wrong-version": ({"version": 2}, "/version"),
    "on-error-typo": ({"on_error": "opne"}, "/on_error"),
}

VALID = {
    "no-classes": {"classes": []},
    "comment-key": {"$comment": "a note"},
    "periodic-forever": {"triggers": {"periodic": {"interval_ms": 100}}},
    "signal-usr2": {"triggers": {"signal": "SIGUSR2", "delays_ms": [0, 500]}},
    "closed-ksm": {"on_error": "closed", "backend": "ksm", "domain": "tenant-a"},
    "minimal": None,   # {"version": 1}
}


def policy_text(policies_dir: Path, change) -> str:
    if isinstance(change, str):
        return change
    if change is None:
        return json.dumps({"version": 1})
    doc = load_policy(policies_dir / "default.json")
    for k, v in change.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    return json.dumps(doc, indent=2) + "\n"


@pytest.fixture(scope="module")
def schema(source_dir):
    jsonschema = pytest.importorskip("jsonschema", reason="python3-jsonschema is not installed")
    doc = json.loads((source_dir / "config" / "policy.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


def schema_errors(schema, text: str) -> list[str]:
    try:
        doc = json.loads(strip_json_comments(text))
    except ValueError as e:
        return [f"syntax: {e}"]
    return ["/" + "/".join(str(p) for p in e.absolute_path) + f": {e.message}"
            for e in schema.iter_errors(doc)]


def check(procs, upm_bin, path, *extra):
    return procs.run([upm_bin, "policy", "check", *extra, path], timeout=30)


# --- upm policy check -------------------------------------------------------


def test_shipped_policies_are_valid(procs, upm_bin, policies_dir, schema):
    files = sorted(policies_dir.glob("*.json"))
    assert files, f"no policies in {policies_dir}"
    for f in files:
        assert schema_errors(schema, f.read_text()) == [], f"{f.name} violates the schema"
        r = check(procs, upm_bin, f)
        assert r.returncode == 0, f"`upm policy check {f.name}` failed ({r.returncode}): {r.stdout}{r.stderr}"


@pytest.mark.parametrize("name", sorted(VALID))
def test_check_accepts_valid(procs, upm_bin, policies_dir, schema, tmp_path, name):
    text = policy_text(policies_dir, VALID[name])
    assert schema_errors(schema, text) == [], "the test's valid variant violates the schema"
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    r = check(procs, upm_bin, path)
    assert r.returncode == 0, f"{r.stdout}{r.stderr}"
    r = check(procs, upm_bin, path, "--normalized")
    assert r.returncode == 0, r.stderr
    assert schema_errors(schema, r.stdout) == [], f"normalized form violates the schema: {r.stdout}"
    assert_subset(json.loads(strip_json_comments(text)), json.loads(r.stdout))


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_check_rejects_broken_with_location(procs, upm_bin, policies_dir, schema, tmp_path, name):
    change, where = BROKEN[name]
    text = policy_text(policies_dir, change)
    assert schema_errors(schema, text), "the schema accepts a document the test calls broken"
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    r = check(procs, upm_bin, path)
    out = r.stdout + r.stderr
    print(f"upm policy check {name}.json -> {r.returncode}\n{out}")
    assert r.returncode == 1, f"want exit status 1 for an invalid policy, got {r.returncode}: {out}"
    assert where in out, f"the message does not name the location `{where}`: {out}"
    assert path.name in out, f"the message does not name the file: {out}"


def test_check_missing_file(procs, upm_bin, tmp_path):
    r = check(procs, upm_bin, tmp_path / "absent.json")
    assert r.returncode != 0
    assert "absent.json" in r.stderr + r.stdout


@pytest.mark.parametrize("name", ["default", "python-ml", "nodejs", "all-anonymous"])
def test_normalized_validates_and_keeps_values(procs, upm_bin, policies_dir, schema, name):
    src = policies_dir / f"{name}.json"
    if not src.exists():
        pytest.skip(f"{src} is not shipped")
    r = check(procs, upm_bin, src, "--normalized")
    assert r.returncode == 0, r.stderr
    normalized = json.loads(r.stdout)
    assert schema_errors(schema, r.stdout) == []
    assert_subset(load_policy(src), normalized)


def assert_subset(want, got, where=""):
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where or '/'}: want an object, got {got!r}"
        for k, v in want.items():
            if k == "$comment":
                continue
            assert k in got, f"{where}/{k} missing from the normalized policy"
            assert_subset(v, got[k], f"{where}/{k}")
    elif isinstance(want, list) and want and all(isinstance(x, str) for x in want):
        # Classes and globs are sets in meaning; their order may change.
        assert sorted(want) == sorted(got), f"{where}: {want!r} became {got!r}"
    else:
        assert want == got, f"{where}: {want!r} became {got!r}"


# --- upm run with a broken policy -------------------------------------------

PROGRAM = ["/bin/sh", "-c", 'echo "out $0 $1"; echo "err" >&2; exit 3', "a b", "c"]


@pytest.mark.parametrize("name", ["syntax-error", "unknown-key", "unknown-backend"])
def test_fail_open_runs_program_unchanged(procs, upm_bin, policies_dir, tmp_path, name):
    change, where = BROKEN[name]
    path = tmp_path / f"{name}.json"
    path.write_text(policy_text(policies_dir, change))
    plain = procs.run(PROGRAM)
    r = procs.run([upm_bin, "run", "--policy", path, "--", *PROGRAM])
    print(f"stderr of `upm run --policy {name}.json`:\n{r.stderr}")
    assert r.returncode == plain.returncode == 3
    assert r.stdout == plain.stdout == "out a b c\n"
    assert "err" in r.stderr.splitlines()
    upm_lines = [ln for ln in r.stderr.splitlines() if ln != "err"]
    assert upm_lines, "upm ran without dedup and did not say why"
    said = "\n".join(upm_lines)
    assert path.name in said and where in said, f"stderr does not say what is wrong: {said}"


def test_fail_open_memhog_checksum_unchanged(procs, upm_bin, memhog, policies_dir, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(policy_text(policies_dir, BROKEN["syntax-error"][0]))
    argv = [memhog, "--mib", "8", "--seed", "5", "--hold", "0", "--checksum"]
    plain = procs.run(argv)
    r = procs.run([upm_bin, "run", "--policy", path, "--", *argv])
    assert plain.returncode == 0 and r.returncode == 0, r.stderr
    assert plain.stdout.splitlines()[-1] == r.stdout.splitlines()[-1]


@pytest.mark.parametrize("policy", ["absent-file", "absent-name"])
def test_fail_open_missing_policy(procs, upm_bin, tmp_path, policy):
    arg = str(tmp_path / "absent.json") if policy == "absent-file" else "no-such-policy"
    r = procs.run([upm_bin, "run", "--policy", arg, "--", *PROGRAM])
    assert r.returncode == 3
    assert r.stdout == "out a b c\n"
    assert Path(arg).name in r.stderr, f"stderr does not name the missing policy: {r.stderr}"


@pytest.mark.parametrize("name", ["unknown-backend", "min-region-too-small", "unknown-key"])
def test_fail_closed_exits_127(procs, upm_bin, policies_dir, tmp_path, name):
    change, where = BROKEN[name]
    change = dict(change, on_error="closed")
    path = tmp_path / f"closed-{name}.json"
    path.write_text(policy_text(policies_dir, change))
    r = procs.run([upm_bin, "run", "--policy", path, "--", *PROGRAM])
    print(f"stderr:\n{r.stderr}")
    assert r.returncode == 127, f"want 127, got {r.returncode}; stderr: {r.stderr}"
    assert "out a b c" not in r.stdout, "the program ran although the policy fails closed"
    assert where in r.stderr, f"stderr does not name `{where}`: {r.stderr}"


# --- a missing preload, --fail-closed ----------------------------------------


def test_missing_preload_fails_open(procs, upm_bin, tmp_path):
    missing = tmp_path / "libupm-preload.so"
    r = procs.run([upm_bin, "run", "--", *PROGRAM], env={"UPM_PRELOAD": str(missing)})
    assert r.returncode == 3 and r.stdout == "out a b c\n", r.stderr
    assert str(missing) in r.stderr, f"stderr does not name the missing preload: {r.stderr}"


def test_missing_preload_closed_policy_exits_127(procs, upm_bin, policies_dir, tmp_path):
    path = tmp_path / "closed.json"
    path.write_text(policy_text(policies_dir, {"on_error": "closed"}))
    r = procs.run([upm_bin, "run", "--policy", path, "--", *PROGRAM],
                  env={"UPM_PRELOAD": str(tmp_path / "absent.so")})
    assert r.returncode == 127, f"exit {r.returncode}: {r.stdout}{r.stderr}"
    assert "out a b c" not in r.stdout


@pytest.mark.parametrize("problem", ["syntax-error", "unknown-key", "missing-file"])
def test_fail_closed_flag_exits_127(procs, upm_bin, policies_dir, tmp_path, problem):
    path = tmp_path / f"{problem}.json"
    if problem != "missing-file":
        path.write_text(policy_text(policies_dir, BROKEN[problem][0]))
    r = procs.run([upm_bin, "run", "--fail-closed", "--policy", path, "--", *PROGRAM])
    assert r.returncode == 127, f"exit {r.returncode}: {r.stdout}{r.stderr}"
    assert "out a b c" not in r.stdout
    assert path.name in r.stderr, r.stderr
