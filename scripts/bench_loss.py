#!/usr/bin/env python
"""`labo-bench loss` from a checkout (see --help); the code is labo_fairseq/benchmarks/loss.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install
from labo_fairseq.benchmarks.loss import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="bench_loss.py"))
