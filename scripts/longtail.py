#!/usr/bin/env python3
"""`labo-longtail` from a checkout; the logic is labo_fairseq.evaluation.longtail (see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install
from labo_fairseq.cli import longtail  # noqa: E402

if __name__ == "__main__":
    sys.exit(longtail(prog="longtail.py"))
