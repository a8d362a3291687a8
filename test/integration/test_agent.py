# SPDX-License-Identifier: GPL-2.0-or-later
"""upmd, the node agent: protocol, registry, savings, metrics, robustness.

Every test starts a real upmd (build/bin/upmd --foreground) on a socket and
state file in tmp_path, with --no-tune unless the test is about tuning, and
talks to it over the real unix socket.  The oracle for savings is the
kernel's own per-process counter /proc/PID/ksm_merging_pages (and
/sys/kernel/mm/ksm for node totals): `upm status --json` and GET /metrics
must agree with it within 5%.  Merging needs ksmd: those tests use the
ksm_fast fixture, which switches /sys/kernel/mm/ksm to fast settings under
the host lock and restores it afterwards.

Robustness: malformed, binary, deeply nested and oversized lines get an
error reply and the agent stays up; 100 clients registering at once all
succeed; a client that stalls does not block the others and is closed after
the client timeout; with the agent down (no socket, a dead socket, an agent
that never answers) upm-hook still exits 0 within about a second and
`upm run` still runs its command.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from upmtest.agent import Agent, Conn
from upmtest.containers import Node
from upmtest.merge import upm_run, wait_merged
from upmtest.procfs import KSM_DIR, PAGE_SIZE, ksm_counters, ksm_merging_pages, read_knob, rss_kib
from upmtest.process import wait_until

TOLERANCE = 0.05


# ---------------------------------------------------------------------------
# Helpers


def sleeper(procs, seconds: int = 300):
    return procs.start(["/bin/sleep", str(seconds)])


def start_ticks(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2:].split()[19])


# A small parser of the Prometheus text format (0.0.4): every sample belongs
# to a family declared by HELP and TYPE before it, names and labels are
# well formed, label values are escaped, values are floats.
NAME_RX = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_RX = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_prometheus(text: str) -> dict:
    """{(name, frozenset(labels.items())): value}; asserts the format."""
    assert text.endswith("\n"), "exposition must end with a newline"
    families: dict[str, str] = {}
    helped: set[str] = set()
    current = None
    samples = {}
    for n, line in enumerate(text.splitlines(), 1):
        where = f"line {n}: {line!r}"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert NAME_RX.fullmatch(name), where
            assert name not in helped, f"{where}: family declared twice"
            helped.add(name)
            current = name
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            assert name == current, f"{where}: TYPE for another family than the HELP before it"
            assert typ in ("gauge", "counter"), where
            families[name] = typ
            continue
        assert not line.startswith("#"), where
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        assert m, f"{where}: not a sample"
        name, labels_text, value = m[1], m[3] or "", m[4]
        assert name == current and name in families, f"{where}: sample outside its family"
        labels = {}
        rest = labels_text
        while rest:
            lm = LABEL_RX.match(rest)
            assert lm, f"{where}: bad label syntax at {rest!r}"
            labels[lm[1]] = lm[2].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
            rest = rest[lm.end():]
            if rest.startswith(","):
                rest = rest[1:]
        if families[name] == "counter":
            assert name.endswith("_total"), f"{where}: counter without _total"
        samples[(name, frozenset(labels.items()))] = float(value)
    return samples


def metric(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# ---------------------------------------------------------------------------
# Command line


def test_help_and_bad_options(procs, upmd_bin):
    r = procs.run([upmd_bin, "--help"])
    assert r.returncode == 0
    for opt in ("--socket", "--state-file", "--metrics-listen", "--textfile", "--log-level", "--foreground",
                "--no-tune"):
        assert opt in r.stdout, opt
    r = procs.run([upmd_bin, "--bogus"])
    assert r.returncode != 0 and "--bogus" in r.stderr
    r = procs.run([upmd_bin, "--version"])
    assert r.returncode == 0 and r.stdout.startswith("upmd ")


def test_refuses_public_metrics_and_a_second_agent(procs, upmd_bin, tmp_path, agent):
    r = procs.run([upmd_bin, "--foreground", "--no-tune", "--socket", tmp_path / "x.sock",
                   "--metrics-listen", "0.0.0.0:9"], timeout=30)
    assert r.returncode == 1 and "loopback" in r.stderr, r.stderr
    assert not (tmp_path / "x.sock").exists(), "the socket of a failed start is left behind"
    r = procs.run([upmd_bin, "--foreground", "--no-tune", "--socket", agent.socket], timeout=30)
    assert r.returncode == 1 and "already listening" in r.stderr, r.stderr
    assert agent.alive()


def test_socket_is_root_only(agent, procs, upmd_bin, tmp_path):
    mode = agent.socket.stat().st_mode & 0o777
    assert mode == 0o600, oct(mode)
    import grp
    group = grp.getgrgid(os.getgid()).gr_name
    other = tmp_path / "grp"
    other.mkdir()
    b = Agent(procs, upmd_bin, other, "--socket-group", group, metrics=False).start()
    st = b.socket.stat()
    assert st.st_mode & 0o777 == 0o660 and st.st_gid == os.getgid(), (oct(st.st_mode), st.st_gid)
    assert b.stop() == 0
    r = procs.run([upmd_bin, "--foreground", "--no-tune", "--socket", other / "x.sock", "--socket-group",
                   "no-such-group-upm"], timeout=30)
    assert r.returncode == 1 and "no such group" in r.stderr, r.stderr


# A client run as another user (setpriv): sends each request given, prints each reply.
_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
f = s.makefile("rw")
for req in sys.argv[2:]:
    f.write(req + "\\n"); f.flush()
    print(f.readline().strip(), flush=True)
"""


def test_peers_that_are_not_root_touch_only_their_own(procs, upmd_bin):
    """Issue #18, finding 9: SO_PEERCRED is checked on every request, not only at connect."""
    import grp
    nobody, nogroup = 65534, grp.getgrgid(65534).gr_name
    d = Path(f"/run/upm-test-authz-{os.getpid()}")
    d.mkdir(mode=0o755)
    try:
        a = Agent(procs, upmd_bin, d, "--socket-group", nogroup, metrics=False).start()
        os.chmod(a.socket.parent, 0o755)  # let the test user reach the socket (0660 root:nogroup)
        theirs = sleeper(procs)  # root's
        assert a.call({"op": "register", "id": "root-c", "pid": theirs.pid})["ok"]
        mine = procs.start(["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
                            "/bin/sleep", "300"])
        wait_until(lambda: Path(f"/proc/{mine.pid}").stat().st_uid == nobody, 5, what="the user's sleeper")
        reqs = [{"op": "ping"}, {"op": "list"},
                {"op": "register", "id": "stolen", "pid": theirs.pid},
                {"op": "unregister", "id": "root-c"},
                {"op": "advised", "id": "root-c", "bytes": 1 << 30, "calls": 1, "seconds": 0.1},
                {"op": "advised", "pid": 1, "bytes": 1 << 30, "calls": 1, "seconds": 0.1},
                {"op": "register", "id": "mine", "pid": mine.pid},
                {"op": "advised", "id": "mine", "bytes": 4096, "calls": 1, "seconds": 0.1},
                {"op": "unregister", "id": "mine"}]
        r = procs.run(["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", "/usr/bin/python3",
                       "-c", _CLIENT, a.socket, *[json.dumps(q) for q in reqs]], timeout=30)
        assert r.returncode == 0, r.stderr
        replies = [json.loads(line) for line in r.stdout.splitlines()]
        ok = [rep.get("ok") for rep in replies]
        assert ok == [True, True, False, False, False, False, True, True, True], replies
        assert "not yours" in replies[2]["error"], replies[2]
        containers = {c["id"]: c for c in a.call({"op": "list"})["containers"]}
        assert list(containers) == ["root-c"]
        assert containers["root-c"]["advised_bytes"] == 0
        assert a.stop() == 0
    finally:
        subprocess.run(["rm", "-rf", str(d)])


# ---------------------------------------------------------------------------
# Protocol and registry


def test_register_list_unregister(procs, agent):
    s = sleeper(procs)
    r = agent.call({"op": "register", "id": "c1", "pid": s.pid, "policy": "python-ml", "domain": "tenant-a",
                    "cgroup": "", "start_time": start_ticks(s.pid)})
    assert r == {"ok": True, "id": "c1", "new": True, "containers": 1}
    r = agent.call({"op": "register", "id": "c1", "pid": s.pid})
    assert r["ok"] and r["new"] is False
    lst = agent.call({"op": "list"})
    assert [c["id"] for c in lst["containers"]] == ["c1"]
    c = lst["containers"][0]
    assert c["pid"] == s.pid and c["start_time"] == start_ticks(s.pid)
    # The registry is on disk before the reply.
    state = json.loads(agent.state.read_text())
    assert [e["id"] for e in state["containers"]] == ["c1"]

    r = agent.call({"op": "advised", "pid": s.pid, "bytes": 1 << 20, "calls": 4, "seconds": 0.01})
    assert r == {"ok": True, "container": "c1"}
    r = agent.call({"op": "advised", "pid": 1, "bytes": 4096})
    assert r == {"ok": True, "container": None}
    st = agent.call({"op": "status"})
    c = st["containers"][0]
    assert c["advised_bytes"] == 1 << 20 and c["advise_calls"] == 4
    assert st["node"]["advised_bytes"] == (1 << 20) + 4096 and st["node"]["advise_calls"] == 5
    assert c["pids"] == [s.pid] and c["source"] == "tree"

    # Errors: no such process, a reused pid, unknown op.
    r = agent.call({"op": "register", "id": "c2", "pid": 4194300})
    assert r["ok"] is False and "does not exist" in r["error"]
    r = agent.call({"op": "register", "id": "c2", "pid": s.pid, "start_time": start_ticks(s.pid) + 1})
    assert r["ok"] is False and "another process" in r["error"]
    r = agent.call({"op": "frobnicate"})
    assert r["ok"] is False and "unknown `op`" in r["error"]

    r = agent.call({"op": "unregister", "id": "c1"})
    assert r == {"ok": True, "id": "c1", "removed": True, "containers": 0}
    r = agent.call({"op": "unregister", "id": "c1"})
    assert r["ok"] and r["removed"] is False


def test_exited_processes_are_dropped(procs, agent):
    s = sleeper(procs)
    assert agent.call({"op": "register", "id": "short", "pid": s.pid})["ok"]
    s.kill_group()
    wait_until(lambda: agent.call({"op": "list"})["containers"] == [], 10, what="the exited container to be dropped")
    assert "exited, dropped" in agent.proc.stderr


def test_exit_is_noticed_at_once(procs, upmd_bin, tmp_path, report):
    """With polling every 60 s, an exited container still leaves the
    registry at once: upmd watches each main process with a pidfd."""
    a = Agent(procs, upmd_bin, tmp_path, "--poll-interval", "60", metrics=False).start()
    s = sleeper(procs)
    assert a.call({"op": "register", "id": "watched", "pid": s.pid})["ok"]
    t = time.monotonic()
    s.kill_group()
    _, took = wait_until(lambda: a.call({"op": "list"})["containers"] == [], 5,
                         what="the exited container to be dropped without polling")
    report(f"exited container dropped {(time.monotonic() - t) * 1000:.0f} ms after the kill (pidfd)")
    assert json.loads(a.state.read_text())["containers"] == []
    assert a.stop() == 0


def test_restart_keeps_the_registry(procs, upmd_bin, tmp_path):
    a = Agent(procs, upmd_bin, tmp_path).start()
    keep = [sleeper(procs) for _ in range(3)]
    gone = sleeper(procs)
    for i, s in enumerate(keep):
        assert a.call({"op": "register", "id": f"keep-{i}", "pid": s.pid, "policy": "p", "domain": f"d{i}"})["ok"]
    assert a.call({"op": "register", "id": "gone", "pid": gone.pid})["ok"]
    assert a.call({"op": "advised", "id": "keep-0", "bytes": 8192})["ok"]

    # A clean stop, a process exiting while the agent is down, a restart.
    assert a.stop() == 0
    assert not a.socket.exists(), "the socket was not removed on a clean stop"
    gone.kill_group()
    b = Agent(procs, upmd_bin, tmp_path).start()
    lst = b.call({"op": "list"})
    assert sorted(c["id"] for c in lst["containers"]) == ["keep-0", "keep-1", "keep-2"]
    by_id = {c["id"]: c for c in lst["containers"]}
    assert by_id["keep-1"]["domain"] == "d1" and by_id["keep-0"]["advised_bytes"] == 8192
    assert "`gone`" in b.proc.stderr and "exited, dropped" in b.proc.stderr

    # SIGKILL loses nothing either: the state is written before the reply.
    assert b.call({"op": "register", "id": "late", "pid": keep[0].pid})["ok"]
    b.stop(signal.SIGKILL)
    c = Agent(procs, upmd_bin, tmp_path).start()   # the stale socket is replaced
    ids = sorted(x["id"] for x in c.call({"op": "list"})["containers"])
    assert ids == ["keep-0", "keep-1", "keep-2", "late"]
    assert c.stop() == 0


# ---------------------------------------------------------------------------
# Robustness


def test_bad_messages_get_errors_and_the_agent_stays_up(agent):
    c = Conn(agent.socket)
    cases = [
        b"not json",
        b"{\"op\":\"ping\"",
        b"[1,2,3]",
        b"{\"op\":\"ping\"}\x00\xff\xfe",
        bytes(range(256)).replace(b"\n", b""),
        b"{\"op\":\"register\",\"id\":\"\xff\",\"pid\":1}",
        b"[" * 5000,
        b"{\"op\":\"register\",\"id\":\"x\",\"pid\":99999999999999999999999}",
        b"{\"op\":\"advised\",\"id\":\"x\",\"bytes\":-1}",
        b"",
    ]
    for data in cases * 2:
        r = c.call(data)
        assert r["ok"] is False and r["error"], data[:60]
        assert c.call({"op": "ping"})["ok"], f"the connection broke after {data[:60]!r}"
    # Oversized: an error reply, then the connection is closed.
    c.send_raw(b"{\"op\":\"ping\",\"pad\":\"" + b"x" * (200 * 1024))
    line = c.read_line()
    assert line is not None and "longer than 65536" in json.loads(line)["error"]
    assert c.closed_by_peer(5)
    c.close()
    # A client that sends a lot and never reads does not hurt the agent either.
    d = Conn(agent.socket)
    try:
        d.send_raw((json.dumps({"op": "ping"}) + "\n").encode() * 20000)
    except OSError:
        pass
    d.close()
    assert agent.alive()
    assert agent.proc.popen.poll() is None
    # Three log lines per connection at most, however many bad requests it sends.
    assert "further bad requests of this connection are not logged" in agent.proc.stderr
    assert agent.proc.stderr.count("bad request:") <= 3 + 1, agent.proc.stderr[-3000:]


def test_memory_stays_bounded_whatever_clients_send(agent, report):
    """Clients that pipeline requests without reading the replies, and
    clients that send endless lines: the agent stops reading from them
    (backpressure) instead of buffering, answers everybody else at once, and
    its memory stays small."""
    pid = agent.proc.pid
    base = rss_kib(pid)
    flooders = []
    stop = threading.Event()

    def flood(conn, chunk):
        try:
            while not stop.is_set():
                conn.send_raw(chunk)
        except OSError:
            pass

    for i in range(8):
        c = Conn(agent.socket, 2)
        chunk = (json.dumps({"op": "status"}) + "\n").encode() * 2000 if i % 2 else b"x" * 65536
        t = threading.Thread(target=flood, args=(c, chunk), daemon=True)
        t.start()
        flooders.append((c, t))
    time.sleep(3)
    worst = 0.0
    for _ in range(10):
        t0 = time.monotonic()
        assert agent.call({"op": "ping"})["ok"]
        worst = max(worst, time.monotonic() - t0)
    peak = rss_kib(pid)
    stop.set()
    for c, t in flooders:
        c.close()
        t.join(10)
    assert agent.alive()
    assert peak - base < 64 * 1024, f"upmd grew from {base} to {peak} KiB under the flood"
    assert worst < 1.0, f"a ping took {worst:.2f} s during the flood"
    report(f"8 flooding clients: upmd RSS {base} -> {peak} KiB, slowest ping {worst * 1000:.1f} ms")


def test_hundred_clients_register_at_once(procs, agent, report):
    s = sleeper(procs)
    n = 100
    barrier = threading.Barrier(n)
    results = [None] * n

    def client(i):
        try:
            conn = Conn(agent.socket, 20)
            barrier.wait(20)
            results[i] = conn.call({"op": "register", "id": f"burst-{i:03d}", "pid": s.pid, "policy": "p"})
            conn.close()
        except Exception as e:  # noqa: BLE001
            results[i] = {"ok": False, "error": repr(e)}

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    took = time.monotonic() - start
    failed = [r for r in results if not (r and r.get("ok"))]
    assert not failed, failed[:5]
    lst = agent.call({"op": "list"})
    assert len(lst["containers"]) == n
    state = json.loads(agent.state.read_text())
    assert len(state["containers"]) == n
    report(f"{n} clients registered at once in {took:.2f} s (all ok)")


def test_stalled_client_does_not_block_others(procs, upmd_bin, tmp_path, report):
    a = Agent(procs, upmd_bin, tmp_path, "--client-timeout", "1.5").start()
    silent = Conn(a.socket)                       # connects, sends nothing
    partial = Conn(a.socket)
    partial.send_raw(b'{"op":"pi')                # half a request, then nothing
    worst = 0.0
    for _ in range(20):
        t = time.monotonic()
        assert a.call({"op": "ping"})["ok"]
        worst = max(worst, time.monotonic() - t)
    assert worst < 0.5, f"a ping took {worst:.3f} s while two clients stalled"
    # Both stalled connections are closed after the client timeout.
    assert silent.closed_by_peer(10) and partial.closed_by_peer(10)
    report(f"slowest ping with two stalled clients: {worst * 1000:.1f} ms; stalled clients closed after the timeout")
    # upmd logs before it closes; the reader thread may still be behind.
    wait_until(lambda: "idle for 1500 ms" in a.proc.stderr, 10, what="upmd to log the idle close",
               describe=lambda: a.proc.stderr[-2000:])
    assert a.stop() == 0


def test_slow_clients_neither_hold_on_nor_lock_the_socket_out(procs, upmd_bin, tmp_path, report):
    """Issue #18, finding 7: /metrics has a connection budget of its own, and a request must
    arrive whole within --client-timeout however steadily its bytes trickle in."""
    a = Agent(procs, upmd_bin, tmp_path, "--max-connections", "8", "--max-metrics-connections", "4",
              "--client-timeout", "1.5").start()
    scrapers = []
    for _ in range(12):                      # more slow scrapers than the protocol's whole budget
        s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
        s.sendall(b"G")
        scrapers.append(s)
    trickler = Conn(a.socket)
    start = time.monotonic()
    closed_after = None
    while time.monotonic() - start < 6:
        for s in scrapers:
            try:
                s.send(b"E")
            except OSError:
                pass
        try:
            trickler.send_raw(b" ")           # a byte every 0.2 s, never a newline
        except OSError:
            closed_after = time.monotonic() - start
            break
        assert a.call({"op": "ping"})["ok"], "the socket is locked out by slow /metrics clients"
        trickler.sock.settimeout(0.2)
        try:
            if trickler.sock.recv(1) == b"":
                closed_after = time.monotonic() - start
                break
        except (socket.timeout, TimeoutError):
            pass
    assert closed_after is not None and closed_after < 4, \
        f"a client trickling one request was not closed ({closed_after})"
    wait_until(lambda: "request not complete for 1500 ms" in a.proc.stderr, 10,
               what="upmd to log the incomplete request", describe=lambda: a.proc.stderr[-2000:])
    assert "refused a metrics connection: 4 open, the limit is 4" in a.proc.stderr
    report(f"trickling client closed after {closed_after:.1f} s; pings answered beside 12 slow scrapers")
    for s in scrapers:
        s.close()
    assert a.stop() == 0


def test_connection_limit(procs, upmd_bin, tmp_path):
    a = Agent(procs, upmd_bin, tmp_path, "--max-connections", "4").start()
    # start()'s pings count until the agent has seen them close.
    wait_until(lambda: a.call({"op": "status"})["agent"]["connections"] == 1, 5, what="no other connection open")
    time.sleep(0.5)   # ... and the status call's own connection
    held = [Conn(a.socket) for _ in range(4)]
    for h in held:
        assert h.call({"op": "ping"})["ok"]
    extra = Conn(a.socket)
    line = extra.read_line()
    assert line is not None and "too many connections" in json.loads(line)["error"]
    for h in held:
        h.close()
    wait_until(lambda: a._pings(), 5, what="a free connection slot")
    assert a.stop() == 0


def test_agent_down_hook_and_run_fail_open(procs, hook_bin, upm_bin, tmp_path):
    """No socket, a socket nobody listens on, and an agent that accepts but
    never answers: upm-hook exits 0 within about a second, `upm run` runs
    its command."""
    config = tmp_path / "node-config.json"
    log = tmp_path / "upm.log"
    config.write_text(json.dumps({"log_file": str(log), "log_level": "debug"}))
    s = sleeper(procs)
    state = json.dumps({"ociVersion": "1.0.2", "id": "down-1", "status": "running", "pid": s.pid,
                        "bundle": "/nonexistent", "annotations": {"upm.enabled": "true"}}).encode()

    dead = tmp_path / "dead.sock"
    d = socket.socket(socket.AF_UNIX)
    d.bind(str(dead))                             # bound, never listening: ECONNREFUSED
    hung = tmp_path / "hung.sock"
    h = socket.socket(socket.AF_UNIX)
    h.bind(str(hung))
    h.listen(16)                                  # accepts into the backlog, never answers

    for sock in (tmp_path / "missing.sock", dead, hung):
        env = {"PATH": "/usr/bin:/bin", "UPM_CONFIG": str(config), "UPM_AGENT_SOCKET": str(sock)}
        for event in ("poststart", "poststop"):
            t = time.monotonic()
            r = subprocess.run([hook_bin, event], input=state, capture_output=True, timeout=30, env=env)
            took = time.monotonic() - t
            assert r.returncode == 0, r.stderr
            assert took < 2.0, f"upm-hook {event} took {took:.2f} s with the agent at {sock.name}"
        t = time.monotonic()
        r = procs.run([upm_bin, "run", "--", "/bin/echo", "still runs"], env={"UPM_AGENT_SOCKET": str(sock)})
        took = time.monotonic() - t
        assert r.returncode == 0 and r.stdout == "still runs\n", r.stderr
        assert took < 2.0, f"upm run took {took:.2f} s with the agent at {sock.name}"
    d.close()
    h.close()
    text = log.read_text()
    assert "not registered" in text, text


def test_hook_registers_and_unregisters(procs, hook_bin, agent, tmp_path):
    config = tmp_path / "node-config.json"
    log = tmp_path / "upm.log"
    config.write_text(json.dumps({"log_file": str(log), "log_level": "debug"}))
    s = sleeper(procs)
    state = {"ociVersion": "1.0.2", "id": "hooked-1", "status": "running", "pid": s.pid, "bundle": "/nonexistent",
             "annotations": {"upm.enabled": "true", "upm.policy": "python-ml", "upm.domain": "tenant-a"}}
    env = {"PATH": "/usr/bin:/bin", "UPM_CONFIG": str(config), "UPM_AGENT_SOCKET": str(agent.socket),
           "SECRET_TOKEN": "do-not-log-me"}
    r = subprocess.run([hook_bin, "poststart"], input=json.dumps(state).encode(), capture_output=True, timeout=30,
                       env=env)
    assert r.returncode == 0, r.stderr
    lst = agent.call({"op": "list"})["containers"]
    assert [c["id"] for c in lst] == ["hooked-1"], log.read_text()
    c = lst[0]
    assert c["pid"] == s.pid and c["policy"] == "python-ml" and c["domain"] == "tenant-a"
    cgroup = ""
    for line in Path(f"/proc/{s.pid}/cgroup").read_text().splitlines():
        if line.startswith("0::") and line[3:] != "/":
            cgroup = line[3:]
    assert c["cgroup"] == cgroup
    state["status"] = "stopped"
    r = subprocess.run([hook_bin, "poststop"], input=json.dumps(state).encode(), capture_output=True, timeout=30,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert agent.call({"op": "list"})["containers"] == []
    text = log.read_text()
    assert "registered with the node agent" in text and "unregistered" in text, text
    assert "do-not-log-me" not in text


# ---------------------------------------------------------------------------
# Savings against the kernel's counters


def stable(read, what: str):
    prev = [None]

    def same_twice():
        now = read()
        ok = now == prev[0]
        prev[0] = now
        return ok

    wait_until(same_twice, 30, interval=0.5, what=f"a stable {what}")
    return prev[0]


def test_eight_processes_savings_agree_with_kernel(ksm_fast, procs, agent, upm_bin, memhog, report):
    """8 x `upm run -- upm-memhog --mib 32 --seed 1` register themselves;
    `upm status --json` and /metrics report per-container savings within 5%
    of /proc/PID/ksm_merging_pages.  Uses /sys/kernel/mm/ksm (ksm_fast)."""
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1", mib=32), env=agent.env) for _ in range(8)]
    ids = {f"run-{h.pid}": h for h in hogs}
    listed = {c["id"] for c in agent.call({"op": "list"})["containers"]}
    assert set(ids) <= listed, f"not every `upm run` registered: {sorted(listed)}"
    wait_merged(hogs, timeout=60)
    kernel = stable(lambda: tuple(ksm_merging_pages(h.pid) for h in hogs), "ksm_merging_pages of the memhogs")

    r = procs.run([upm_bin, "status", "--json"], env=agent.env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["agent"]["running"] is True
    rows = {c["id"]: c for c in doc["containers"]}
    worst = 0.0
    for (cid, h), want in zip(ids.items(), kernel):
        assert cid in rows, f"{cid} missing from upm status: {sorted(rows)}"
        got = rows[cid]["ksm_merging_pages"]
        assert want > 0.9 * h.pages
        err = abs(got - want) / want
        worst = max(worst, err)
        assert err <= TOLERANCE, f"{cid}: upm status says {got} pages, the kernel {want}"
        assert rows[cid]["saved_bytes"] == got * PAGE_SIZE
        assert h.pid in rows[cid]["pids"]
    node = doc["agent"]["node"]
    assert node["containers_merging_pages"] >= sum(rows[c]["ksm_merging_pages"] for c in ids)

    samples = parse_prometheus(agent.metrics())
    now = ksm_counters()
    for (cid, h), want in zip(ids.items(), kernel):
        got = metric(samples, "upm_container_merging_pages", id=cid)
        assert got is not None and abs(got - want) <= TOLERANCE * want, f"{cid}: /metrics {got}, kernel {want}"
        assert metric(samples, "upm_container_saved_bytes", id=cid) == got * PAGE_SIZE
    sharing = metric(samples, "upm_node_pages_sharing")
    assert sharing is not None and abs(sharing - now["pages_sharing"]) <= TOLERANCE * now["pages_sharing"] + 64
    assert metric(samples, "upm_ksmd_cpu_seconds_total") is not None
    report(f"8 containers: worst disagreement of `upm status` with ksm_merging_pages {worst:.2%} "
           f"({sum(kernel)} pages merged in total)")

    # The table names every container.
    r = procs.run([upm_bin, "status"], env=agent.env)
    assert r.returncode == 0 and all(cid in r.stdout for cid in ids), r.stdout
    # Exited processes leave the registry.
    for h in hogs[:4]:
        h.stop()
    wait_until(lambda: len({c["id"] for c in agent.call({"op": "list"})["containers"]} & set(ids)) == 4, 10,
               what="4 stopped memhogs to leave the registry")


def test_status_without_agent_says_so(procs, upm_bin, tmp_path):
    env = {"UPM_AGENT_SOCKET": str(tmp_path / "none.sock")}
    r = procs.run([upm_bin, "status"], env=env)
    assert r.returncode == 0 and "node agent: not running" in r.stdout, r.stdout
    r = procs.run([upm_bin, "status", "--json"], env=env)
    doc = json.loads(r.stdout)
    assert doc["agent"]["running"] is False and doc["containers"] == [] and "node" in doc


def test_status_watch_refreshes(procs, upm_bin, agent):
    p = procs.start([upm_bin, "status", "--json", "--watch", "0.3"], env=agent.env)
    wait_until(lambda: p.stdout.count('"agent"') >= 3, 15, what="three refreshes of upm status --watch")
    p.kill_group()


# ---------------------------------------------------------------------------
# Metrics endpoint and textfile


def test_metrics_endpoint(procs, agent):
    s = sleeper(procs)
    assert agent.call({"op": "register", "id": 'odd "id" \\ here', "pid": s.pid, "policy": "p"})["ok"]
    samples = parse_prometheus(agent.metrics())
    assert metric(samples, "upm_agent_containers") == 1
    assert metric(samples, "upm_container_processes", id='odd "id" \\ here') == 1
    assert metric(samples, "upm_container_merging_pages", id='odd "id" \\ here') == ksm_merging_pages(s.pid)
    counters = ksm_counters()
    assert metric(samples, "upm_node_ksm_run") == counters["run"]
    for path, code in (("/nope", 404), ("/", 200)):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}{path}", timeout=10) as r:
                assert r.status == code
        except urllib.error.HTTPError as e:
            assert e.code == code
    req = urllib.request.Request(f"http://127.0.0.1:{agent.port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.1 431")
    assert agent.alive()


def test_textfile(procs, upmd_bin, tmp_path):
    out = tmp_path / "textfile"
    out.mkdir()
    a = Agent(procs, upmd_bin, tmp_path, "--textfile", str(out), "--textfile-interval", "1", metrics=False).start()
    prom = out / "upmd.prom"
    wait_until(prom.exists, 10, what="upmd.prom")
    samples = parse_prometheus(prom.read_text())
    assert metric(samples, "upm_agent_containers") == 0
    assert oct(prom.stat().st_mode & 0o777) == oct(0o644)
    assert not [p for p in out.iterdir() if p.name != "upmd.prom"], list(out.iterdir())
    assert a.stop() == 0


# ---------------------------------------------------------------------------
# Tuning: original settings restored


def test_tuner_restores_original_settings(ksm_fast, procs, upmd_bin, tmp_path):
    """With tuning on, upmd changes /sys/kernel/mm/ksm; SIGTERM puts back
    exactly what it found (here: the ksm_fast settings)."""
    knobs = ("run", "pages_to_scan", "sleep_millisecs")
    before = {k: (KSM_DIR / k).read_text().strip() for k in knobs}
    a = Agent(procs, upmd_bin, tmp_path, "--tune", "--tuner-state-file", str(tmp_path / "ksm-original.json"))
    a.start()
    a.require_tuner()
    st = a.call({"op": "status"})
    assert st["tuner"]["mode"] in ("idle", "burst"), st["tuner"]
    s = sleeper(procs)
    assert a.call({"op": "register", "id": "kick", "pid": s.pid})["ok"]
    wait_until(lambda: a.call({"op": "status"})["tuner"]["mode"] == "burst", 10, what="a burst after a register")
    assert a.stop() == 0, a.proc.stderr
    after = {k: (KSM_DIR / k).read_text().strip() for k in knobs}
    assert after == before, a.proc.stderr[-2000:]
    assert "original ksmd settings restored" in a.proc.stderr


def test_burst_merges_then_idle_then_restore(ksm_off, procs, upmd_bin, upm_bin, memhog, tmp_path, report):
    """The issue's acceptance path on the KSM backend: ksmd stopped on the
    host (ksm_off: the originals are run=0), upmd with tuning; 4 x `upm run
    -- upm-memhog --mib 32` register (a burst), the memory merges, ksmd is
    back at its idle settings (run=0) within 60 s of the merge, and SIGTERM
    restores the originals exactly.  Uses /sys/kernel/mm/ksm (ksm_off holds
    the host lock and restores the host's settings afterwards)."""
    knobs = [k for k in ("run", "pages_to_scan", "sleep_millisecs", "advisor_mode") if (KSM_DIR / k).exists()]

    def read_knobs():
        return {k: read_knob(KSM_DIR / k) for k in knobs}

    before = read_knobs()
    assert before["run"] == "0"
    a = Agent(procs, upmd_bin, tmp_path, "--tune", "--tuner-state-file", str(tmp_path / "ksm-original.json"))
    a.start()
    a.require_tuner()
    t0 = time.monotonic()
    hogs = [procs.memhog(upm_run(upm_bin, memhog, "--seed", "1", mib=32), env=a.env) for _ in range(4)]
    # What the preload will report itself: the memory is advised now.
    for h in hogs:
        assert a.call({"op": "advised", "pid": h.pid, "bytes": h.length})["container"] == f"run-{h.pid}"
    took = wait_merged(hogs, timeout=120)
    merged_at = time.monotonic()
    st = a.call({"op": "status"})
    assert st["tuner"]["bursts"] >= 1, st["tuner"]
    _, settle = wait_until(lambda: a.call({"op": "status"})["tuner"]["mode"] == "idle", 60,
                           what="the tuner back to idle after the merge")
    idle = read_knobs()
    assert idle["run"] == "0", f"ksmd still running while idle: {idle}"
    rows = {c["id"]: c for c in a.call({"op": "status"})["containers"]}
    for h in hogs:
        assert rows[f"run-{h.pid}"]["ksm_merging_pages"] >= 0.95 * h.pages
    assert a.stop() == 0, a.proc.stderr[-2000:]
    assert read_knobs() == before, a.proc.stderr[-2000:]
    report(f"burst tuning: 4 x 32 MiB merged {took:.1f} s after the last ready line "
           f"({merged_at - t0:.1f} s after the first start), back to idle {settle:.1f} s later, originals restored")


def test_runc_containers_register_through_the_hook(ksm_fast, procs, agent, tmp_path, hook_bin, runtime_bin,
                                                   preload_lib, policies_dir, memhog, base_spec, report):
    """Two annotated runc containers through upm-runtime: the real upm-hook
    registers them at poststart (id, init pid, policy, domain, cgroup), their
    savings agree with /proc/PID/ksm_merging_pages of the init within 5%
    (ksm_fast switches /sys/kernel/mm/ksm), and poststop unregisters them."""
    n = Node("runc", tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    try:
        n.use_hook(hook_bin, agent.socket)
        argv = ["/opt/upm-memhog", "--mib", "32", "--seed", "5", "--hold-until-signal"]
        ann = {"upm.enabled": "true", "upm.policy": "default", "upm.domain": "tenant-a"}
        hogs = [n.start_memhog(n.bundle(argv, ann)) for _ in range(2)]
        ids = n.ids[-2:]
        wait_until(lambda: {c["id"] for c in agent.call({"op": "list"})["containers"]} >= set(ids), 10,
                   what="both containers registered", describe=n.our_log)
        wait_merged(hogs, timeout=60)
        kernel = stable(lambda: tuple(ksm_merging_pages(h.pid) for h in hogs), "ksm_merging_pages of the containers")
        rows = {c["id"]: c for c in agent.call({"op": "status"})["containers"]}
        for cid, h, want in zip(ids, hogs, kernel):
            row = rows[cid]
            assert row["pid"] == h.pid and row["policy"] == "default" and row["domain"] == "tenant-a"
            assert h.pid in row["pids"], row
            got = row["ksm_merging_pages"]
            assert abs(got - want) <= TOLERANCE * want, f"{cid}: agent {got}, kernel {want} ({row['source']})"
        report(f"runc: 2 containers registered by upm-hook, counted by {rows[ids[0]]['source']}, "
               f"agent {[rows[c]['ksm_merging_pages'] for c in ids]} vs kernel {list(kernel)} pages")
        for h in hogs:
            h.stop()
        wait_until(lambda: not ({c["id"] for c in agent.call({"op": "list"})["containers"]} & set(ids)), 15,
                   what="both containers gone from the registry")
        log = n.our_log()
        assert all(f"container `{cid}`: registered with the node agent" in log for cid in ids), log
        assert "] error: " not in log, log
    finally:
        procs.cleanup()
        n.cleanup()


def test_runc_container_starts_with_a_hung_agent(procs, tmp_path, hook_bin, runtime_bin, preload_lib,
                                                 policies_dir, memhog, base_spec):
    """An agent that accepts connections and never answers: an annotated runc
    container through upm-runtime still runs, its hooks give up within their
    timeout, and the node log says it was not registered."""
    n = Node("runc", tmp_path, runtime_bin, preload_lib, policies_dir, memhog, base_spec, procs)
    hung = tmp_path / "hung.sock"
    h = socket.socket(socket.AF_UNIX)
    h.bind(str(hung))
    h.listen(16)
    try:
        n.use_hook(hook_bin, hung)
        b = n.bundle(["/bin/echo", "container ran"], {"upm.enabled": "true"})
        t = time.monotonic()
        r, cid = n.run(b)
        took = time.monotonic() - t
        assert r.returncode == 0 and "container ran" in r.stdout, f"stdout {r.stdout!r}; stderr {r.stderr!r}"
        log = n.our_log()
        assert f"container `{cid}`: not registered with the node agent" in log, log
        assert "timed out" in log, log
        print(f"container with a hung agent: {took:.2f} s")
    finally:
        h.close()
        procs.cleanup()
        n.cleanup()
