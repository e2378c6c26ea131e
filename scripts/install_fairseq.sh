#!/usr/bin/env bash
# Builds fairseq 0.12.2 from its sdist with patches/fairseq-0.12.2.patch applied and installs it
# into any Python environment (a venv, conda, the system), leaving every other package alone.
#
# usage: bash scripts/install_fairseq.sh [--python PY] [--sdist FILE]
#   --python PY   the environment's interpreter (default: $PYTHON, else `python` on PATH)
#   --sdist FILE  a local fairseq-0.12.2.tar.gz (default: pip downloads it from its index or
#                 find-links; PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR make that a wheelhouse)
#
# The environment must already have torch, numpy (<2), cython, setuptools and wheel: fairseq is
# compiled against them (--no-build-isolation) and installed without its own dependency pins
# (--no-deps: hydra-core<1.1, omegaconf<2.1 and torchaudio do not work on Python 3.11 / a current
# torch). requirements.txt, or setup.py's install_requires, provides its run-time dependencies.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FAIRSEQ_VERSION=0.12.2
PATCH=$ROOT/patches/fairseq-$FAIRSEQ_VERSION.patch
PY=${PYTHON:-python}
sdist=

die() { echo "install_fairseq: error: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --python) PY=${2:?--python needs a value}; shift 2 ;;
        --sdist) sdist=${2:?--sdist needs a value}; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
command -v "$PY" >/dev/null || die "$PY not found; pass --python /path/to/python"
[[ -f $PATCH ]] || die "$PATCH is missing (run this script from a checkout of the project)"
[[ -z $sdist || -f $sdist ]] || die "--sdist $sdist does not exist"
missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("torch", "numpy", "Cython", "setuptools", "wheel") if importlib.util.find_spec(m) is None))
EOF
)
[[ -z $missing ]] || die "$PY lacks what fairseq is compiled against: $missing (install requirements.txt, or your own torch, first)"

PIP=("$PY" -m pip --disable-pip-version-check --quiet)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
if [[ -z $sdist ]]; then
    # --no-build-isolation: pip prepares the sdist's metadata with the environment's own torch/numpy
    "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation -d "$build" "fairseq==$FAIRSEQ_VERSION"
    sdist=$build/fairseq-$FAIRSEQ_VERSION.tar.gz
fi
echo "[install_fairseq] building fairseq $FAIRSEQ_VERSION with $(basename "$PATCH") for $PY"
tar -xzf "$sdist" -C "$build"
patch -d "$build/fairseq-$FAIRSEQ_VERSION" -p1 --quiet --forward < "$PATCH"
"${PIP[@]}" install --no-deps --no-build-isolation --force-reinstall "$build/fairseq-$FAIRSEQ_VERSION"
"$PY" -c "import fairseq; print('[install_fairseq] ok: fairseq', fairseq.__version__)"
