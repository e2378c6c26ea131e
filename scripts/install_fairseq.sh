#!/usr/bin/env bash
# Builds fairseq 0.12.2 from its sdist with patches/fairseq-0.12.2.patch applied and installs it
# into any Python environment (a venv, conda, the system), leaving every other package alone.
# From a checkout, what an installed labo_fairseq does with `labo-install-fairseq`: this script
# only picks the interpreter; labo_fairseq/install.py (standard library only) does the work.
#
# usage: bash scripts/install_fairseq.sh [--python PY] [--sdist FILE] [--no-build-requirements]
#                                        [--cache-dir DIR] [--no-cache] [--check]
#   --python PY   the environment's interpreter (default: $PYTHON, else `python` on PATH)
#   --sdist FILE  a local fairseq-0.12.2.tar.gz (default: pip downloads it from its index or
#                 find-links; PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR make that a wheelhouse)
#   --no-build-requirements  do not install cython, wheel, setuptools or numpy<2 where missing
#   --cache-dir DIR  where built wheels are kept (default: $LABO_FAIRSEQ_CACHE, else
#                 ~/.cache/labo-fairseq); an environment with the same Python, platform, torch,
#                 numpy and patch installs the kept wheel instead of compiling
#   --no-cache    build even if a wheel is kept, and keep none
#   --check       only say whether PY has the patched fairseq (exit status 0 or 1)
#
# The environment must already have torch. fairseq is compiled against it and numpy<2, cython,
# setuptools and wheel (--no-build-isolation; the last four are installed first where missing) and
# installed without its own dependency pins (--no-deps: hydra-core<1.1, omegaconf<2.1 and
# torchaudio do not work on Python 3.11 / a current torch). requirements.txt, or setup.py's
# install_requires, provides its run-time dependencies.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python}
args=()
die() { echo "install_fairseq: error: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --python) PY=${2:?--python needs a value}; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
command -v "$PY" >/dev/null || die "$PY not found; pass --python /path/to/python"
PY=$(command -v "$PY")
# the checkout's labo_fairseq, whether or not PY's environment has it installed yet
exec env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m labo_fairseq.install \
    --python "$PY" ${args[@]+"${args[@]}"}
