#!/usr/bin/env python3
"""Command-line entry point; the logic is labo_fairseq.evaluation.longtail (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install

from labo_fairseq.evaluation.errors import run_main  # noqa: E402
from labo_fairseq.evaluation.longtail import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main, "longtail.py"))
