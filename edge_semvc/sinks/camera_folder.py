"""The folder a camera records into (`record.dir/<camera>`): its lock, one writer per camera,
and whether the disk under `record.dir` is there. A missing `record.dir`, or one that was a
mount point and no longer is (an unmounted disk leaves its empty folder on the root disk), is
waited for, never replaced by a folder on the root disk; the camera folder itself is created
again, and locked again, when it went (its disk came back empty)."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ..errors import SinkError


class CameraFolder:
    """Locked from construction (SinkError when it cannot be) to `close()`."""

    def __init__(self, root: Path, camera: str):
        self.root, self.path, self.camera = root, root / camera, camera
        if not root.is_dir():
            raise SinkError(f"cannot record camera {camera!r}: record.dir {root} is missing "
                            "(an unmounted disk?); waiting for it")
        self._mount_point = os.path.ismount(root)
        self._fd = -1
        try:
            self._lock()
        except OSError as e:
            raise SinkError(f"camera {camera!r} is already being recorded into {self.path} "
                            "(another process or sink holds its lock)" if e.errno == errno.EBUSY
                            else f"cannot record camera {camera!r} into {self.path}: "
                            f"{e.strerror or e}") from None

    def ready(self) -> None:
        """Before a segment opens: OSError while record.dir or its disk is away."""
        if not self.root.is_dir() or (self._mount_point and not os.path.ismount(self.root)):
            raise FileNotFoundError(errno.ENOENT, "record.dir is missing or its disk is not "
                                    "mounted", str(self.root))
        if not (self.path / ".lock").exists():  # a new folder: the lock is the old one's
            self._lock()

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # releases the flock

    def _lock(self) -> None:
        """Create the camera folder and hold its lock (released with the descriptor, by
        close() or by the kernel when the process dies)."""
        self.path.mkdir(exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OSError(errno.EBUSY, "another process or sink holds its lock",
                          str(self.path)) from None
        self.close()
        self._fd = fd
