"""One pipeline at a time per experiment directory."""
import fcntl
import os
from pathlib import Path

from labo_fairseq.experiment.recipe import RecipeError


class OutputLock:
    """An exclusive lock on OUT: one pipeline at a time writes an experiment directory. The lock
    file goes when its holder releases it; one left by a killed pipeline is simply taken over."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / ".experiment.lock"
        while True:
            handle = open(self.path, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise RecipeError(f"{out_dir} is in use by another experiment; wait for it or choose another "
                                  f"--out") from None
            try:
                current = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()  # its holder released and removed it between open and flock: try again
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # still held: nobody else holds this file now
            self._file.close()
            self._file = None
