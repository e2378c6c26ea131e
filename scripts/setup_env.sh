#!/usr/bin/env bash
# Creates or updates .venv/: the pinned requirements, fairseq 0.12.2 built from its sdist with
# patches/fairseq-0.12.2.patch, and labo_fairseq (editable). Each step keeps a stamp keyed on the
# hash of its inputs, so a second run with nothing changed returns at once and a change to the
# pins or the patch redoes only what depends on it. Never installs a CUDA build of torch.
#
# Usage: bash scripts/setup_env.sh        (VENV=... and PYTHON=... override the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
FAIRSEQ_VERSION=0.12.2
PATCH=$ROOT/patches/fairseq-$FAIRSEQ_VERSION.patch

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
# step NAME KEY: true when the stamp of step NAME does not match KEY (the step must run)
step_needed() { [[ ! -f $VENV/.stamp-$1 || $(cat "$VENV/.stamp-$1") != "$2" ]]; }
step_done() { echo "$2" > "$VENV/.stamp-$1"; }

if [[ ! -x $VENV/bin/python ]]; then
    command -v "$PYTHON" >/dev/null || { echo "setup_env: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
    echo "[setup_env] creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)

key=$(hash_of requirements.txt)
if step_needed requirements "$key"; then
    echo "[setup_env] installing pinned requirements (requirements.txt)"
    "${PIP[@]}" install -r requirements.txt
    step_done requirements "$key"
fi

# fairseq is rebuilt when the patch, this script or a pin it compiles against changes.
key=$( (cat "$PATCH" scripts/setup_env.sh; grep -iE '^(torch|numpy|cython|setuptools|wheel)==' requirements.txt) | sha256sum | cut -d' ' -f1)
if step_needed fairseq "$key"; then
    echo "[setup_env] building fairseq $FAIRSEQ_VERSION from its sdist with $(basename "$PATCH")"
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    # --no-build-isolation: compile against the pinned numpy/cython in the venv.
    # --no-deps: fairseq's own pins do not work here; requirements.txt replaces them.
    "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation -d "$build" "fairseq==$FAIRSEQ_VERSION"
    tar -xzf "$build/fairseq-$FAIRSEQ_VERSION.tar.gz" -C "$build"
    patch -d "$build/fairseq-$FAIRSEQ_VERSION" -p1 --quiet --forward < "$PATCH"
    "${PIP[@]}" install --no-deps --no-build-isolation --force-reinstall "$build/fairseq-$FAIRSEQ_VERSION"
    step_done fairseq "$key"
fi

key=$(hash_of setup.py)
if step_needed labo_fairseq "$key"; then
    echo "[setup_env] installing labo_fairseq (editable)"
    "${PIP[@]}" install --no-deps --no-build-isolation -e .
    "$VENV/bin/python" -c "import torch, fairseq, labo_fairseq; print('[setup_env] ok: torch', torch.__version__, '| fairseq', fairseq.__version__)"
    step_done labo_fairseq "$key"
fi
