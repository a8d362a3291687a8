# SPDX-License-Identifier: LGPL-2.1-or-later
"""upm: advise memory for page merging from Python (ctypes, no dependencies).

A process that runs under upm (in an annotated container, or started with
``upm run``) has libupm-preload.so loaded; its policy advises the process's
memory on its own.  This module lets Python code advise *now*, e.g. right
after loading a model::

    import upm
    weights = load_weights()            # a numpy array, bytearray, mmap...
    upm.advise(weights)                 # its pages may be shared with other instances
    upm.advise_all()                    # or: apply the policy to the whole process

Where the library is not loaded, :func:`available` is False and the other
functions raise ``OSError(ENOSYS)``, so a function can use upm where it is
present and run unchanged elsewhere::

    if upm.available():
        upm.advise(weights)

The library is looked up, in order: in the running process (preloaded or
already loaded), at ``$UPM_PRELOAD_PATH`` (or ``$UPM_PRELOAD``), next to this module's install
location (``<libdir>/upm/libupm-preload.so``), and in the standard install
directories.  Loading it explicitly (not preloaded) enables the C API only:
the policy's automatic triggers run only when the library was preloaded.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from pathlib import Path

__all__ = ["advise", "advise_all", "available", "backend", "version", "library_path"]

PAGE_SIZE = mmap.PAGESIZE
_LIB_NAME = "libupm-preload.so"
_STANDARD_DIRS = (
    "/usr/local/lib/upm",
    "/usr/local/lib64/upm",
    "/usr/lib/upm",
    "/usr/lib64/upm",
    "/usr/local/lib/x86_64-linux-gnu/upm",
    "/usr/lib/x86_64-linux-gnu/upm",
    "/usr/local/lib/aarch64-linux-gnu/upm",
    "/usr/lib/aarch64-linux-gnu/upm",
)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_path: str | None = None
_searched = False


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.upm_advise.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.upm_advise.restype = ctypes.c_int
    lib.upm_advise_all.argtypes = []
    lib.upm_advise_all.restype = ctypes.c_int
    lib.upm_backend.argtypes = []
    lib.upm_backend.restype = ctypes.c_char_p
    lib.upm_version.argtypes = []
    lib.upm_version.restype = ctypes.c_char_p
    return lib


def _candidates() -> list[str]:
    out = []
    for var in ("UPM_PRELOAD_PATH", "UPM_PRELOAD"):     # the latter is what `upm run` reads
        if os.environ.get(var):
            out.append(os.environ[var])
    here = Path(__file__).resolve().parent
    out.append(str(here.parent / _LIB_NAME))        # <libdir>/upm/python/upm.py -> <libdir>/upm/
    out.extend(os.path.join(d, _LIB_NAME) for d in _STANDARD_DIRS)
    return out


def _load() -> ctypes.CDLL | None:
    global _lib, _lib_path, _searched
    with _lock:
        if _searched:
            return _lib
        _searched = True
        try:
            proc = ctypes.CDLL(None)
            if hasattr(proc, "upm_advise_all") and hasattr(proc, "upm_advise"):
                _lib, _lib_path = _bind(proc), "(loaded in process)"
                return _lib
        except OSError:
            pass
        for path in _candidates():
            if not os.path.isfile(path):
                continue
            try:
                _lib, _lib_path = _bind(ctypes.CDLL(path)), path
                return _lib
            except (OSError, AttributeError):
                continue
        return None


def _require() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise OSError(errno.ENOSYS, f"upm: {_LIB_NAME} is not loaded and was not found "
                                    "(run under `upm run` or set UPM_PRELOAD_PATH)")
    return lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise OSError(rc, f"upm: {what}: {os.strerror(rc)}")


class _PyBuffer(ctypes.Structure):
    # Py_buffer (CPython's buffer protocol), stable since Python 3.3.
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.POINTER(ctypes.c_ssize_t)),
        ("strides", ctypes.POINTER(ctypes.c_ssize_t)),
        ("suboffsets", ctypes.POINTER(ctypes.c_ssize_t)),
        ("internal", ctypes.c_void_p),
    ]


_PyBUF_SIMPLE = 0       # contiguous bytes, read-only allowed


def _buffer_range(obj) -> tuple[int, int, object]:
    """(address, length, keepalive) of a contiguous buffer-protocol object."""
    pythonapi = getattr(ctypes, "pythonapi", None)
    if pythonapi is not None and hasattr(pythonapi, "PyObject_GetBuffer"):
        view = _PyBuffer()
        get = pythonapi.PyObject_GetBuffer
        get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
        get.restype = ctypes.c_int
        release = pythonapi.PyBuffer_Release
        release.argtypes = [ctypes.POINTER(_PyBuffer)]
        release.restype = None
        try:
            get(obj, ctypes.byref(view), _PyBUF_SIMPLE)
        except BufferError as e:
            raise ValueError(f"upm.advise: needs a contiguous buffer: {e}") from None
        return view.buf or 0, view.len, (view, release)
    # No C API (e.g. PyPy): writable buffers only.
    mv = memoryview(obj)
    if not mv.contiguous:
        raise ValueError("upm.advise: needs a contiguous buffer")
    arr = (ctypes.c_char * mv.nbytes).from_buffer(mv)
    return ctypes.addressof(arr), mv.nbytes, None


def advise(obj_or_addr, length: int | None = None) -> int:
    """Advise memory now; return the number of bytes advised.

    ``obj_or_addr`` is either an object supporting the buffer protocol
    (bytes, bytearray, memoryview, mmap, array.array, a contiguous numpy
    array...) -- then the whole pages inside it are advised (the range is
    rounded *inward* to page boundaries, so nothing outside the object is
    touched; a buffer smaller than a page advises nothing and returns 0) --
    or an integer address, which must be page-aligned, with ``length`` in
    bytes (like madvise(2)).

    Raises OSError with the errno from upm_advise() (EINVAL, ENOMEM, ENOSYS
    when upm is not available...), ValueError for a non-contiguous buffer.
    """
    lib = _require()
    if isinstance(obj_or_addr, int):
        if length is None:
            raise TypeError("upm.advise: an address needs a length")
        _check(lib.upm_advise(obj_or_addr, length), f"upm_advise({obj_or_addr:#x}, {length})")
        return length
    addr, size, keep = _buffer_range(obj_or_addr)
    try:
        if length is not None:
            size = min(size, length)
        start = (addr + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        end = (addr + size) // PAGE_SIZE * PAGE_SIZE
        if end <= start:
            return 0
        _check(lib.upm_advise(start, end - start), f"upm_advise({start:#x}, {end - start})")
        return end - start
    finally:
        if keep is not None:
            view, release = keep
            release(ctypes.byref(view))


def advise_all() -> None:
    """Apply the process's policy to all of its memory now (on this thread)."""
    _check(_require().upm_advise_all(), "upm_advise_all()")


def backend() -> str:
    """"upm", "ksm", "ksm-process", or "none" (also when the library is absent)."""
    lib = _load()
    return lib.upm_backend().decode() if lib is not None else "none"


def version() -> str | None:
    """The library's version, or None when it is absent."""
    lib = _load()
    return lib.upm_version().decode() if lib is not None else None


def available() -> bool:
    """True when the library is loaded and has a backend."""
    return backend() != "none"


def library_path() -> str | None:
    """Where the library was found ("(loaded in process)" when preloaded), or None."""
    _load()
    return _lib_path
