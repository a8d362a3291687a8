# SPDX-License-Identifier: GPL-2.0-or-later
"""Helpers of the integration suites (plain functions and classes; the
pytest fixtures built on them are in ../conftest.py).

The suites import what they need from here, never from each other:

  paths       source and build directories, build products (find_built)
  procfs      readers of /proc and /sys/kernel/mm/ksm: KSM counters and
              knobs, smaps, pagemap frames, ksmd's CPU time, process memory
  ksm         switching the host's KSM: the host lock, save, restore
              (KsmControl, KSM), restore on exit and on signals
  process     processes a test starts (Process, ProcessGroup, Memhog),
              wait_until, a clean environment
  policy      policy files (comments allowed)
  merge       upm-memhog under `upm run`: the merge scenarios' shared steps
  containers  OCI bundles and containers through upm-runtime (Node)
  agent       upmd on a socket in tmp_path (Agent, Conn)

test/demo/*.py import them too (with test/integration on sys.path).
"""
