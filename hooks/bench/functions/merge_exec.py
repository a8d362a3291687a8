# SPDX-License-Identifier: GPL-2.0-or-later
"""merge_exec.py CMD ARGS...: the ksm-* modes' launcher for non-python functions.

With UPM_BENCH_MERGE_ANY=1, makes the process mergeable as a whole
(prctl(PR_SET_MEMORY_MERGE, 1); kept across execve since Linux 6.7), then
execs CMD: what a user does without upm (systemd's MemoryKSM=yes does the
same for a service).
"""

import os
import sys

from serve import merge_any

if os.environ.get("UPM_BENCH_MERGE_ANY") == "1":
    print(f"merge_exec: {merge_any()}", file=sys.stderr, flush=True)
os.execv(sys.argv[1], sys.argv[1:])
