"""One process per run directory: an exclusive lock on RUN_DIR/.lock.

The lock is an OS file lock (flock), so it is released when its process dies,
even by SIGKILL: a crashed run never blocks its own resume.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tokrl.errors import UsageError


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(f"another tokrl process (pid {holder}) is using {self.path.parent}; wait for it "
                             "or pick another train.output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)      # a crash leaves the file, but no lock on it
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
