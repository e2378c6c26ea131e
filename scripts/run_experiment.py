#!/usr/bin/env python
"""Run an LS-vs-LABO comparison from a recipe (see `--help` and recipes/): `labo-experiment` from a checkout."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install
from labo_fairseq.cli import experiment  # noqa: E402

if __name__ == "__main__":
    sys.exit(experiment(prog="run_experiment.py"))
