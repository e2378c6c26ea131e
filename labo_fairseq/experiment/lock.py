"""One pipeline at a time per experiment directory."""
from pathlib import Path

from labo_fairseq.experiment.recipe import RecipeError
from labo_fairseq.locks import LockFile


class OutputLock(LockFile):
    """An exclusive lock on OUT (OUT/.experiment.lock): one pipeline at a time writes an experiment
    directory. The lock file goes when its holder releases it; one left by a killed pipeline is
    simply taken over."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(out_dir / ".experiment.lock",
                         lambda holder: RecipeError(f"{out_dir} is in use by another experiment; wait for it or "
                                                    f"choose another --out"))
