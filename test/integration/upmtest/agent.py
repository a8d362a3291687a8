# SPDX-License-Identifier: GPL-2.0-or-later
"""upmd, the node agent, as the tests run it: a real `upmd --foreground` on a
socket and state file in tmp (Agent), --no-tune unless asked for --tune, and
clients speaking its line protocol over the real unix socket (Conn)."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from .process import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Conn:
    """One client connection speaking the line protocol."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes | None:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def call(self, request) -> dict:
        data = request if isinstance(request, bytes) else json.dumps(request).encode()
        self.send_raw(data + b"\n")
        line = self.read_line()
        assert line is not None, f"the agent closed the connection instead of answering {data[:100]!r}"
        return json.loads(line)

    def closed_by_peer(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


class Agent:
    """A upmd process on a socket in tmp_path."""

    def __init__(self, procs, exe: Path, tmp: Path, *extra: str, metrics: bool = True) -> None:
        self.procs = procs
        self.exe = exe
        self.socket = tmp / "run" / "upmd.sock"
        self.state = tmp / "upmd-state.json"
        self.port = free_port() if metrics else None
        self.extra = list(extra)
        self.env = {"UPM_AGENT_SOCKET": str(self.socket)}
        self.proc = None

    def argv(self) -> list:
        argv = [self.exe, "--foreground", "--socket", self.socket, "--state-file", self.state, "--log-level", "debug"]
        if "--poll-interval" not in self.extra:
            argv += ["--poll-interval", "0.2"]
        if self.port:
            argv += ["--metrics-listen", f"127.0.0.1:{self.port}"]
        if "--tune" in self.extra:
            return argv + [a for a in self.extra if a != "--tune"]
        return argv + ["--no-tune"] + self.extra

    def start(self, env: dict[str, str] | None = None) -> "Agent":
        """Starts upmd (`env`: more variables, e.g. $UPM_CONFIG for the
        node configuration it resolves policies with)."""
        self.proc = self.procs.start(self.argv(), env=env)
        wait_until(lambda: self._pings() or self.proc.popen.poll() is not None, 15,
                   what="upmd to answer ping", describe=lambda: self.proc.stderr[-2000:])
        assert self.proc.popen.poll() is None, f"upmd exited {self.proc.popen.poll()}: {self.proc.stderr}"
        return self

    def require_tuner(self) -> None:
        """Skips the test when upmd, by design, does not tune ksmd here (a
        kernel with MADV_UPM or without KSM), saying why; fails when the
        tuner should have started and did not.  Asks upmd (`status`), not its
        stderr, which a reader thread may not have consumed yet."""
        tuner = self.call({"op": "status"}).get("tuner") or {}
        if tuner.get("mode") not in (None, "off"):
            return
        reason = tuner.get("reason", "")
        assert not reason.startswith("failed to start"), f"ksm tuning {reason}: {self.proc.stderr[-2000:]}"
        self.stop()
        pytest.skip(f"upmd does not tune ksmd here: {reason}")

    def _pings(self) -> bool:
        try:
            c = Conn(self.socket, 2)
            ok = c.call({"op": "ping"})["ok"]
            c.close()
            return ok
        except OSError:
            return False

    def call(self, request) -> dict:
        c = Conn(self.socket)
        try:
            return c.call(request)
        finally:
            c.close()

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.signal(sig)
        return self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc.popen.poll() is None and self._pings()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return r.read().decode()
