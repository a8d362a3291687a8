#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""A Python + numpy process for the demo: the same data in every instance.

    numpy_worker.py MIB

Builds a float64 array of MIB MiB from a fixed seed (like a model's weights
initialised deterministically), prints "ready 0xADDR LEN pid=PID" (the
format upm-memhog uses), waits for SIGTERM or SIGINT, then checks that the
array still equals a freshly generated one: exit status 0 if so, 2 if not.
"""

import os
import signal
import sys

import numpy as np


def weights(mib: int) -> np.ndarray:
    return np.random.default_rng(1).random(mib * 1024 * 1024 // 8)


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 1:
        print("usage: numpy_worker.py MIB", file=sys.stderr)
        return 1
    mib = int(sys.argv[1])
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    a = weights(mib)
    print(f"ready {a.ctypes.data:#x} {a.nbytes} pid={os.getpid()}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    if not np.array_equal(a, weights(mib)):
        print("numpy_worker: the array changed", file=sys.stderr)
        return 2
    print("intact", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
