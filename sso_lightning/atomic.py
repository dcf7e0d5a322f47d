"""Publishing outputs atomically: a reader (or a crash) never sees a half-written file or directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temp_beside(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (hidden, one per process)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_atomic(path: Path, data: str | bytes, exclusive: bool = False) -> None:
    """Write to a temp file beside ``path``, fsync, then rename onto it. ``exclusive``: refuse
    (FileExistsError) when ``path`` exists, so nothing already there is overwritten."""
    if exclusive and path.exists():
        raise FileExistsError(path)
    stream_atomic(path, lambda f: f.write(data.encode() if isinstance(data, str) else data))


def stream_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write`` fills a temp file beside ``path`` (streamed: nothing held in memory), which is
    fsynced and renamed onto ``path``; a crash leaves the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish_dir(path: Path, save: Callable[[Path], None]) -> None:
    """``save`` fills a temp directory, which is then renamed to ``path``. FileExistsError when
    ``path`` exists already (e.g. another process published it first); the temp copy is removed."""
    tmp = temp_beside(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise FileExistsError(path)
        try:
            os.rename(tmp, path)
        except OSError as e:  # a non-empty directory appeared there in between
            raise FileExistsError(path) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
