"""sha256 of files, and a recorded sha256 beside each file the project produces itself (converted
models, the compiled x264 binding), checked when the file is used again: a cached file that was
truncated or overwritten is rebuilt instead of loaded (a truncated binding crashed with SIGBUS,
a damaged model ran with NaN scores)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def record(path: Path) -> None:
    """Remember `path`'s sha256 beside it (written atomically)."""
    side = _sidecar(Path(path))
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(sha256_file(path) + "\n")
    os.replace(tmp, side)


def intact(path: Path) -> bool:
    """`path` exists and has the sha256 recorded for it (no record: not known to be intact)."""
    path = Path(path)
    try:
        return _sidecar(path).read_text().strip() == sha256_file(path)
    except OSError:
        return False
