"""The spool's files: names, modes (``0600`` files, a ``0700`` directory), durable writes
(fsync of the file and of the directory) and lazy line reading."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "CLAIM_PREFIX",
    "CORRUPT_FILE",
    "DIR_MODE",
    "FILE_MODE",
    "LOCK_FILE",
    "QUARANTINE_FILE",
    "RECORD_START",
    "REPLAY_LOCK_FILE",
    "SEGMENT_PREFIX",
    "WORK_SUFFIXES",
    "fsync_dir",
    "lines",
    "private",
    "write_all",
]

SEGMENT_PREFIX = "seg-"
CLAIM_PREFIX = "replaying-"
QUARANTINE_FILE = "quarantine.jsonl"
CORRUPT_FILE = "corrupt.jsonl"
LOCK_FILE = ".lock"
REPLAY_LOCK_FILE = ".replay.lock"
WORK_SUFFIXES = (".rewrite", ".quarantine")
FILE_MODE = 0o600
DIR_MODE = 0o700
RECORD_START = b'{"id":'  # every record line starts so (``to_dict`` puts the id first)


def lines(path: Path) -> Iterator[str]:
    """The non-blank lines of ``path`` without their newline, read lazily (nothing if the
    file is gone: a replay or purge moved it meanwhile)."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 (closed below, also when abandoned)
    except FileNotFoundError:
        return
    with f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                yield line


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def private(path: str, flags: int) -> int:
    """An ``open`` opener that creates files ``0600``."""
    return os.open(path, flags, FILE_MODE)
