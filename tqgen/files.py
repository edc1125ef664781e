"""Atomic file writes, shared by the kernel build, the on-demand render cache, the tune cache and
the benchmark results: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None if it is absent (or vanished: a concurrent build may be cleaning up)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def write_if_changed(path: Path, text: str) -> bool:
    """Atomically write ``text`` unless the file already holds exactly it; returns whether it wrote."""
    data = text.encode()
    if read_bytes(path) == data:
        return False
    atomic_write(path, data)
    return True
