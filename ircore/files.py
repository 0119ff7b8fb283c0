"""Atomic file writing: a result is either absent or complete, never half-written.

Every writer stages into a hidden temporary file in the destination folder and renames it into place
(``os.replace`` is atomic within one file system); a crash, Ctrl-C or kill leaves at most a hidden
``.<name>.<random>.tmp`` file behind, never a truncated result.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import uuid
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` when the block succeeds.

    The parent folder is created if needed; on an exception the temporary file is removed and ``path`` is
    untouched. The temporary name keeps ``path``'s suffix, so writers that pick a format by suffix work.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Writes ``data`` to ``path`` atomically (flushed to disk before the rename). Returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return pathlib.Path(path)


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes UTF-8 ``text`` to ``path`` atomically. Returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> pathlib.Path:
    """Writes ``data`` as JSON to ``path`` atomically (serialised first, so a bad value writes nothing)."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")
