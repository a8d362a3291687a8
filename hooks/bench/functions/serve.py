# SPDX-License-Identifier: GPL-2.0-or-later
"""Entry point of every python function of `upm bench`, inside its container.

    /usr/bin/python3 serve.py FUNCTION --socket PATH --cache DIR

1. With UPM_BENCH_MERGE_ANY=1 (the `ksm-*` modes: what a user does without
   upm), the whole process is made mergeable first, before anything is
   imported: prctl(PR_SET_MEMORY_MERGE, 1); on a kernel without it (before
   6.4, e.g. the upm test kernel), MADV_MERGEABLE on every private mapping,
   repeated every second by a thread named merge-any.
2. The cold start: imports FUNCTION (a module next to this file) and calls
   its cold_start(cache_dir), which imports the libraries and loads the
   model or data, the way a real function initialises after its container
   started.
3. Serves HTTP/1.0 on a unix socket (PATH, in a directory the bench
   bind-mounts): `GET /invoke?seed=N` runs one invocation and answers one
   JSON line with the result and the seconds it took inside the function;
   `GET /ping` answers without doing work.  One request at a time, as a
   function instance with one concurrent invocation.

Only the standard library here; the functions use Debian packages.
"""

import ctypes
import os
import sys

PR_SET_MEMORY_MERGE = 67


MADV_MERGEABLE = 12
PR_SET_NAME = 15


def _madvise_all_private(libc) -> int:
    """MADV_MERGEABLE on every private mapping of this process (what
    PR_SET_MEMORY_MERGE makes mergeable); returns the bytes advised."""
    done = 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            name = parts[5].strip() if len(parts) > 5 else ""
            if parts[1][3] != "p" or name in ("[vsyscall]", "[vvar]", "[vdso]"):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_MERGEABLE) == 0:
                done += end - start
    return done


def merge_any() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) == 0:
        return "whole process mergeable (PR_SET_MEMORY_MERGE)"
    err = ctypes.get_errno()
    if err != 22:
        return f"prctl(PR_SET_MEMORY_MERGE) failed: {os.strerror(err)}"
    # EINVAL: a kernel before 6.4 (the upm test kernel is 6.1).  What users
    # did there: MADV_MERGEABLE on every private mapping, repeated so that
    # new mappings are covered too -- here every second, on a thread named
    # merge-any (upm bench counts its CPU as advice)
    import threading

    def loop():
        libc.prctl(PR_SET_NAME, b"merge-any", 0, 0, 0)
        while True:
            _madvise_all_private(libc)
            time.sleep(1.0)

    import time
    _madvise_all_private(libc)
    threading.Thread(target=loop, daemon=True).start()
    return "whole process mergeable (no PR_SET_MEMORY_MERGE: MADV_MERGEABLE on every private mapping, every second)"


def main() -> int:
    merge_note = merge_any() if os.environ.get("UPM_BENCH_MERGE_ANY") == "1" else "-"
    import argparse
    import http.server
    import importlib
    import json
    import socketserver
    import time
    import urllib.parse

    ap = argparse.ArgumentParser()
    ap.add_argument("function")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--cache", required=True)
    args = ap.parse_args()

    t0 = time.monotonic()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    fn = importlib.import_module(args.function)
    invoke = fn.cold_start(args.cache)
    cold = time.monotonic() - t0
    print(f"serve: {args.function}: cold start {cold:.2f} s; merge: {merge_note}", file=sys.stderr, flush=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def address_string(self):
            return "unix"

        def log_message(self, *a):
            pass

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/ping":
                body = {"ok": True, "pid": os.getpid(), "cold_start_s": cold, "merge": merge_note}
            elif url.path == "/invoke":
                t = time.perf_counter()
                try:
                    result = invoke(int(q.get("seed", "0")))
                    body = {"ok": True, "result": result}
                except Exception as e:  # noqa: BLE001 - reported to the caller
                    body = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                body["seconds"] = time.perf_counter() - t
            else:
                self.send_error(404)
                return
            data = (json.dumps(body) + "\n").encode()
            self.send_response(200 if body["ok"] else 500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Server(socketserver.UnixStreamServer):
        allow_reuse_address = True

    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    tmp = args.socket + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    srv = Server(tmp, Handler)
    os.rename(tmp, args.socket)      # the bench sees the socket only once it listens
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
