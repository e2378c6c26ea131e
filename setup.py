"""labo_fairseq: the LABO criterion for fairseq, plus data preparation, evaluation and the
experiment pipeline as console commands (`labo-prepare`, `labo-evaluate`, ...).

Dependencies are lower bounds (the exact, tested versions are the lock file requirements.txt).
fairseq itself is not listed: its 0.12.2 sdist only builds and runs on a current Python/torch with
patches/fairseq-0.12.2.patch applied and `--no-build-isolation --no-deps`, which pip cannot do for
a dependency. The console command `labo-install-fairseq` (labo_fairseq/install.py; the patch ships
inside the wheel) does it after `pip install labo_fairseq`; scripts/install_fairseq.sh runs the
same code from a checkout. The commands that need fairseq check for the patched one first. torch is a lower bound only, so pip keeps whatever torch build (CUDA or CPU) the
environment already has.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# The one place the version is written is labo_fairseq/__init__.py; read it as text so that
# building does not import the package.
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "labo_fairseq" / "__init__.py").read_text(),
                    re.MULTILINE).group(1)

# What fairseq 0.12.2 imports at run time; its --no-deps install does not bring them.
FAIRSEQ_RUNTIME = [
    "hydra-core>=1.3",          # fairseq's own pin (<1.1) does not import on Python 3.11
    "omegaconf>=2.3",
    "bitarray>=2.0",
    "cffi>=1.15",
    "regex>=2022.1",
    "tensorboardX>=2.6",        # fairseq-train --tensorboard-logdir (lighter than tensorboard)
]

setup(
    name="labo_fairseq",
    version=VERSION,
    description="LABO label regularization (Lu et al., Findings of ACL 2023) as a fairseq criterion",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["labo_fairseq", "labo_fairseq.*"]) + ["labo_fairseq.recipes",
                                                                           "labo_fairseq.patches"],
    # The repository's recipes/ ship inside the package, so an installed labo-experiment finds
    # them by name (labo-experiment multi30k-cpu); patches/ likewise, for labo-install-fairseq.
    package_dir={"labo_fairseq.recipes": "recipes", "labo_fairseq.patches": "patches"},
    package_data={"labo_fairseq.recipes": ["*.toml"], "labo_fairseq.patches": ["*.patch"]},
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24,<2",           # fairseq's Cython extensions are built against numpy 1.x
        "sacrebleu>=2.3",
        "sacremoses>=0.1",
        "subword-nmt>=0.3.8",
        "sentencepiece>=0.1.99",
        "matplotlib>=3.6",
        "tabulate>=0.9",
        "tqdm>=4.62",
        *FAIRSEQ_RUNTIME,
    ],
    extras_require={
        "gpu": ["triton>=3.0"],
        "eval": ["compare-mt>=0.2.10"],
        "ivon": ["ivon-opt>=0.1.3"],
        "hf": ["transformers>=5.25", "accelerate>=1.1"],   # labo_fairseq.hf (Trainer needs accelerate)
        "cluster": ["submitit>=1.5"],   # labo-experiment --launcher slurm / submitit-local
        "viz": ["tensorboard>=2.21"],   # viewing [train] tensorboard = true logs (writing needs only tensorboardX)
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "compare-mt>=0.2.10", "liger-kernel>=0.8",
                 "transformers>=5.25", "accelerate>=1.1", "submitit>=1.5"],
    },
    entry_points={
        "console_scripts": [
            "labo-prepare = labo_fairseq.cli:prepare",
            "labo-evaluate = labo_fairseq.cli:evaluate",
            "labo-longtail = labo_fairseq.cli:longtail",
            "labo-report = labo_fairseq.cli:report",
            "labo-experiment = labo_fairseq.cli:experiment",
            "labo-bench = labo_fairseq.cli:bench",
            "labo-install-fairseq = labo_fairseq.cli:install_fairseq",
        ],
    },
)
