#!/usr/bin/env python
"""`labo-bench train` from a checkout (see --help); the code is labo_fairseq/benchmarks/train.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install
from labo_fairseq.benchmarks.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="bench_train.py"))
