# SPDX-License-Identifier: GPL-2.0-or-later
"""Entry point of every python function of `upm bench`, inside its container.

    /usr/bin/python3 serve.py FUNCTION --socket PATH --cache DIR

1. With UPM_BENCH_MERGE_ANY=1 (the `ksm-*` modes: what a user does without
   upm), the whole process is made mergeable first, before anything is
   imported: prctl(PR_SET_MEMORY_MERGE, 1).
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


def merge_any() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
        return f"prctl(PR_SET_MEMORY_MERGE) failed: {os.strerror(ctypes.get_errno())}"
    return "whole process mergeable (PR_SET_MEMORY_MERGE)"


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
