"""One process at a time per output directory: an exclusive flock on a lock file that holds the
holder's process id and is removed when the holder releases it.

A lock file left by a killed holder is simply taken over (the kernel dropped its flock). Because
a releasing holder removes the file, a process may lock a file that was unlinked after it opened
it; it then drops that lock and takes the new file."""
import fcntl
import os
from pathlib import Path
from typing import Callable, Optional


class LockFile:
    """Holds the lock on `path` from construction until release().

    busy(holder) makes the error raised when another process holds the lock (`holder`: the
    process id the file names, or "another process"). make_parent() is called once when the lock
    file's directory is missing (a failed run that had created it may just have removed it)."""

    def __init__(self, path, busy: Callable[[str], Exception], make_parent: Optional[Callable[[], object]] = None):
        self.path = Path(path)
        recreated = False
        while True:
            try:
                handle = open(self.path, "a+", encoding="utf-8")
            except FileNotFoundError:
                if recreated or make_parent is None:
                    raise
                make_parent()
                recreated = True
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise busy(holder) from None
            try:
                current = os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()  # its holder released and removed it between open and flock: try again
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # still held: nobody else holds this file now
            self._file.close()
            self._file = None
