#!/usr/bin/env python
"""Run an LS-vs-LABO comparison from a recipe (see `--help` and recipes/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from labo_fairseq.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
