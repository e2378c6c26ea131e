#!/usr/bin/env bash
# Creates .venv/ with the pinned requirements, fairseq 0.12.2 (patched) and labo_fairseq (editable).
# Idempotent: a stamp keyed on the hash of the pins, the patch, this script and setup.py makes a
# second run with nothing changed return in a second; a change to any of them rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
FAIRSEQ_VERSION=0.12.2
PATCH=$ROOT/patches/fairseq-$FAIRSEQ_VERSION.patch

stamp_key=$(cat requirements.txt "$PATCH" scripts/setup_env.sh setup.py | sha256sum | cut -d' ' -f1)
if [[ -f $VENV/.labo-stamp && $(cat "$VENV/.labo-stamp") == "$stamp_key" ]]; then
    exit 0
fi

echo "[setup_env] building $VENV (python: $PYTHON)"
command -v "$PYTHON" >/dev/null || { echo "[setup_env] error: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo "[setup_env] installing pinned requirements"
"${PIP[@]}" install -q -r requirements.txt

echo "[setup_env] building fairseq $FAIRSEQ_VERSION from its sdist with $(basename "$PATCH")"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
# --no-build-isolation: build against the pinned numpy/cython in .venv; --no-deps: fairseq's own
# pins (hydra-core<1.1, omegaconf<2.1, torchaudio) do not work here, requirements.txt replaces them.
"${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation -d "$build" "fairseq==$FAIRSEQ_VERSION"
tar -xzf "$build/fairseq-$FAIRSEQ_VERSION.tar.gz" -C "$build"
patch -d "$build/fairseq-$FAIRSEQ_VERSION" -p1 --quiet < "$PATCH"
"${PIP[@]}" install -q --no-deps --no-build-isolation "$build/fairseq-$FAIRSEQ_VERSION"

echo "[setup_env] installing labo_fairseq (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .

"$VENV/bin/python" -c "import torch, fairseq, labo_fairseq; print('[setup_env] ok: torch', torch.__version__, 'fairseq', fairseq.__version__)"
echo "$stamp_key" > "$VENV/.labo-stamp"
