"""Reading a file the user (or a pull request) named, with bounds: regular files only, and at most so many bytes.

``read_bounded(path, limit)`` follows symlinks, then refuses anything but a regular file (a FIFO would block the
read forever, ``/dev/zero`` would fill the memory, a directory cannot be read), opens without blocking, checks
the opened file again (it may have been swapped since the ``stat``) and reads at most ``limit`` bytes: a file
that grows past the limit while it is read is refused as well. Problems are :class:`UnreadableFile` with a
message fragment (``"is a FIFO, not a regular file"``) the caller words into its own error, naming its file.
``open_regular(path)`` makes the same checks for a file read as a stream (the caller bounds its reads).
No pytest, no engine imports.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_CHUNK = 1 << 20


class UnreadableFile(Exception):
    """``path`` is not a regular file, or is larger than the limit: ``str(exc)`` says which, without the path."""

    def __init__(self, problem: str, *, too_large: bool = False) -> None:
        super().__init__(problem)
        self.too_large = too_large


def file_kind(mode: int) -> str:
    """What a ``stat`` mode is, for people: ``a directory``, ``a FIFO``, ``a character device``..."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _refuse(mode: int) -> UnreadableFile:
    return UnreadableFile(f"is {file_kind(mode)}, not a regular file")


def _mib(size: int) -> str:
    return f"{size // 2**20} MiB" if size >= 2**20 else f"{size} bytes"


def open_regular(path: Path | str) -> int:
    """A file descriptor open for reading on the regular file at ``path`` (symlinks followed); the caller closes
    it. ``OSError`` as ``open`` raises it; ``UnreadableFile`` for a directory, FIFO, device or socket (checked
    before the open and again on the opened file, which may have been swapped since the ``stat``)."""
    mode = os.stat(path).st_mode  # follows symlinks: a link to /dev/zero is a character device
    if not stat.S_ISREG(mode):
        raise _refuse(mode)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)  # non-blocking: a FIFO swapped in after the stat does not hang the open
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(info.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: Path | str, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), at most ``limit`` of them.

    ``FileNotFoundError`` and other ``OSError`` as ``open`` raises them; ``UnreadableFile`` for a file that is
    not regular (directory, FIFO, device, socket) or holds more than ``limit`` bytes."""
    fd = open_regular(path)
    try:
        info = os.fstat(fd)
        if info.st_size > limit:
            raise UnreadableFile(f"is {info.st_size} bytes, larger than the {_mib(limit)} allowed", too_large=True)
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise UnreadableFile(f"is larger than the {_mib(limit)} allowed (it grew while being read)",
                                     too_large=True)
        return b"".join(chunks)
    finally:
        os.close(fd)
