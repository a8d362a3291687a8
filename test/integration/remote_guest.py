# SPDX-License-Identifier: GPL-2.0-or-later
"""The guest side of test_remote_kernel.py, run by the test kernel's /init
(upm.mode=hostroot) as `python3 remote_guest.py WORK` in the host's root:
upmd with a node configuration whose policy `remote` says `"advice":
"remote"`, two instances of remote_twin built static and two built
dynamic (no preload in any), registered with upmd; upmd advises them on
its own (the policy's start trigger, then its delay).  The instances and
their policies come from WORK/args.json.  Writes
WORK/result.json: every instance's ksm_merging_pages once upmd's jobs are
done, the copy-on-write check, upmd's status and log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def call(sock: str, req: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(sock)
        s.sendall((json.dumps(req) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def wait(pred, timeout: float):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    return pred()


def merging(pid: int) -> int:
    return int(Path(f"/proc/{pid}/ksm_merging_pages").read_text())


def main() -> int:
    work = Path(sys.argv[1])
    args = json.loads((work / "args.json").read_text())
    sock = "/run/upm/upmd.sock"
    os.makedirs("/run/upm", exist_ok=True)
    log = open(work / "upmd.log", "w")
    env = dict(os.environ, UPM_CONFIG=str(work / "node-config.json"))
    upmd = subprocess.Popen([args["upmd"], "--foreground", "--socket", sock, "--state-file", "/run/upm/state.json",
                             "--no-tune", "--log-level", "debug", "--poll-interval", "0.2"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    result: dict = {"instances": []}
    procs = []
    try:
        wait(lambda: os.path.exists(sock) and call(sock, {"op": "ping"}).get("ok"), 30)
        result["status_before"] = call(sock, {"op": "status"})["remote"]
        for inst in args["instances"]:
            p = subprocess.Popen([*inst["argv"], str(args["mib"]), str(inst["seed"])], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, UPM_POLICY_PATH=str(work / "policies")))
            info = json.loads(p.stdout.readline())
            cid, ok = f"run-{p.pid}", True           # `upm run` registers itself as run-PID
            if inst["register"]:
                cid = f"{inst['kind']}-{len(procs)}"
                ok = call(sock, {"op": "register", "id": cid, "pid": p.pid, "policy": inst["register"]}).get("ok")
            procs.append((p, cid))
            result["instances"].append({**inst, "id": cid, "pid": p.pid, "pages": info["pages"],
                                        "registered": bool(ok)})
        # the start trigger at registration, the delay 3 s later: two jobs each
        st = wait(lambda: (lambda r: r if r.get("jobs_done", 0) >= 2 * len(procs) and r.get("queued", 1) == 0
                           and not r.get("busy", True)
                           else None)(call(sock, {"op": "status"})["remote"]), 120)
        result["status"] = st or call(sock, {"op": "status"})["remote"]
        for (p, _), inst in zip(procs, result["instances"]):
            inst["merging_pages"] = merging(p.pid)
            p.stdin.write("check\n")
            p.stdin.flush()
            inst["check"] = p.stdout.readline().strip()
            inst["merging_after_cow"] = merging(p.pid)
        result["upm_stats"] = {}
        for f in sorted(Path("/sys/kernel/mm/upm").glob("*")):
            try:
                result["upm_stats"][f.name] = f.read_text().strip()
            except OSError:
                pass
    finally:
        for p, _ in procs:
            p.kill()
        upmd.terminate()
        try:
            upmd.wait(10)
        except subprocess.TimeoutExpired:
            upmd.kill()
        log.close()
        (work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
