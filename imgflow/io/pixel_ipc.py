"""Decoded pixels from a decode worker to the parent, leaving nothing behind whoever dies.

Pixels travel in an anonymous memory file (``memfd_create``): the worker creates it, writes the
pixels, and passes the *file descriptor* over the worker's Unix socket (SCM_RIGHTS). Nothing
ever gets a name in /dev/shm, so nothing can leak there: the kernel frees the memory when the
last descriptor and mapping are gone, which happens on its own when either process dies (a
SIGKILLed run, a segfaulting decoder). The parent maps the file and wraps it as a numpy array
without copying; the memory is released when that array is garbage-collected.

Where ``memfd_create`` or descriptor passing is unavailable (not Linux), the pixel bytes travel
inside the reply itself, pickled through the same pipe: slower, equally leak-free.

This module imports numpy only.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
from multiprocessing.connection import Connection

import numpy as np

#: True where pixels travel as memory-file descriptors (Linux); else as bytes in the reply.
PASSES_FDS = hasattr(os, "memfd_create") and hasattr(socket, "SCM_RIGHTS")


def export(pixels: np.ndarray, name: str) -> int | bytes:
    """Worker side: the pixels in a fresh memory file (its fd), or their bytes as a fallback."""
    if not PASSES_FDS:
        return pixels.tobytes()
    size = max(1, pixels.nbytes)
    fd = os.memfd_create(name, getattr(os, "MFD_CLOEXEC", 0))
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as mapped:
            # A temporary view, never named, so nothing keeps the mapping alive after this line.
            np.ndarray(pixels.shape, dtype=pixels.dtype, buffer=mapped)[...] = pixels
    except BaseException:
        os.close(fd)
        raise
    return fd


def send_fd(conn: Connection, fd: int) -> None:
    """Worker side: pass ``fd`` to the parent over the pipe (a Unix socket pair), then close it."""
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            socket.send_fds(sock, [b"F"], [fd])
    finally:
        os.close(fd)


def receive_fd(conn: Connection) -> int:
    """Parent side: the descriptor the worker sent right after its reply; EOFError if it died."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        data, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
    if not fds:
        raise EOFError("the decode worker closed its pipe before passing the pixels"
                       if not data else "the decode worker's message carried no pixels")
    return fds[0]


def import_fd(fd: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Parent side: the pixels as an array over the memory file (no copy); closes ``fd``.

    The mapping lives exactly as long as the array and its views (it is their ``base``), and
    holds no descriptor (Python's own ``mmap`` would keep a duplicate open per live image).
    """
    try:
        wanted = int(np.prod(shape)) * np.dtype(dtype).itemsize
        size = os.fstat(fd).st_size
        if size < wanted:
            raise OSError(f"the pixel buffer holds {size} bytes, expected {wanted}")
        mapping = _Mapping(fd, max(1, wanted), tuple(shape), np.dtype(dtype).str)
    finally:
        os.close(fd)
    return np.asarray(mapping)


class _Mapping:
    """One shared mapping of a memory file, exposed to numpy; unmapped when garbage-collected."""

    __slots__ = ("__array_interface__", "_address", "_size")

    def __init__(self, fd: int, size: int, shape: tuple[int, ...], typestr: str) -> None:
        self._address = None
        address = _libc().mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise MemoryError(f"cannot map {size} bytes of decoded pixels: {os.strerror(err)}")
        self._address, self._size = address, size
        self.__array_interface__ = {"shape": shape, "typestr": typestr, "data": (address, False), "version": 3}

    def __del__(self) -> None:
        if self._address is not None:
            _libc().munmap(self._address, self._size)
            self._address = None


_LIBC: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    """libc's mmap/munmap with their C signatures (loaded once)."""
    if not _LIBC:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _LIBC.append(libc)
    return _LIBC[0]


def import_bytes(data: bytes, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Parent side, fallback: the pixels from bytes carried in the reply (writable copy)."""
    return np.frombuffer(bytearray(data), dtype=np.dtype(dtype)).reshape(shape)
