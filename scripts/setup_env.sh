#!/usr/bin/env bash
# Creates or updates the project's Python environment: the pinned requirements, fairseq 0.12.2
# built from its sdist with patches/fairseq-0.12.2.patch (scripts/install_fairseq.sh), and
# labo_fairseq (editable). Each step keeps a stamp keyed on the hash of its inputs, so a second run
# with nothing changed returns at once and a change to the pins or the patch redoes only what
# depends on it.
#
# usage: bash scripts/setup_env.sh [--system-torch | --into-current-env] [--offline WHEELHOUSE]
#                                  [--requirements FILE] [--no-fairseq]
#   (default)           .venv/ with everything in requirements.txt, torch's CPU build included
#   --system-torch      .venv/ made with --system-site-packages: keeps the torch (e.g. a CUDA build)
#                       that $PYTHON already has, and the triton that came with it
#   --into-current-env  no venv: installs into the environment of $PYTHON (default: `python` on
#                       PATH, i.e. the active venv/conda env), keeping its torch and triton
#   --offline DIR       installs only from DIR, a wheelhouse made by `make wheelhouse` (pip
#                       --no-index --find-links DIR); nothing is downloaded
#   --requirements FILE another lock file instead of requirements.txt
#   --no-fairseq        leave fairseq alone (the environment already has a patched one)
# VENV=... sets the venv's path (default .venv), PYTHON=... the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
mode=venv offline= requirements=requirements.txt fairseq=yes
die() { echo "setup_env: error: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --system-torch) mode=system; shift ;;
        --into-current-env) mode=current; shift ;;
        --offline) offline=$(cd "${2:?--offline needs a wheelhouse directory}" 2>/dev/null && pwd) \
                       || die "--offline: $2 is not a directory"; shift 2 ;;
        --requirements) requirements=${2:?--requirements needs a file}; shift 2 ;;
        --no-fairseq) fairseq=no; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ -f $requirements ]] || die "requirements file $requirements does not exist"

if [[ $mode == current ]]; then
    PY=${PYTHON:-$(command -v python || command -v python3 || true)}
    [[ -n $PY ]] && command -v "$PY" >/dev/null || die "no python found; set PYTHON=/path/to/python"
    STAMPS=$("$PY" -c 'import sys; print(sys.prefix)')/.labo-fairseq-stamps
else
    VENV=${VENV:-$ROOT/.venv}
    PYTHON=${PYTHON:-python3.11}
    if [[ -x $VENV/bin/python ]]; then
        shares=$(grep -qs '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" && echo system || echo venv)
        [[ $shares == "$mode" ]] || die "$VENV exists and was made $([[ $shares == system ]] && echo with || echo without) \
--system-site-packages; remove it first (make clean-env) to switch"
    else
        command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set PYTHON=/path/to/python3.11"
        echo "[setup_env] creating $VENV with $PYTHON${mode/venv/}"
        "$PYTHON" -m venv $([[ $mode == system ]] && echo --system-site-packages) "$VENV"
    fi
    PY=$VENV/bin/python
    STAMPS=$VENV
fi
mkdir -p "$STAMPS"
if [[ -n $offline ]]; then
    # every pip call below, install_fairseq.sh's included, reads only the wheelhouse
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=$offline
    echo "[setup_env] offline: installing from $offline only"
fi
PIP=("$PY" -m pip --disable-pip-version-check --quiet)
# pip install "$@". pip's check of the whole environment afterwards reports fairseq 0.12.2's own
# pins (hydra-core<1.1, omegaconf<2.1, torchaudio) as an "ERROR" with exit status 0: they are unmet
# on purpose (fairseq is installed with --no-deps and runs with the pinned newer versions), so those
# lines become one note; every other line of pip's, other conflicts included, is shown as it is.
pip_install() {
    local status=0
    "${PIP[@]}" install "$@" 2> "$tmp/pip-stderr" || status=$?
    awk '{ line[NR] = $0 }
         /^fairseq 0\.12\.2 requires / { ours[NR] = 1; n++; next }
         / requires .*(incompatible|not installed)\.$/ { others++ }
         END {
             for (i = 1; i <= NR; i++) {
                 if (i in ours) continue
                 if (n && !others && line[i] ~ /^ERROR: pip.s dependency resolver does not currently take/) continue
                 print line[i] > "/dev/stderr"
             }
             if (n) print "[setup_env] note: pip reports fairseq 0.12.2'"'"'s own pins (hydra-core<1.1, omegaconf<2.1, torchaudio) as unmet; that is intended (it runs with the versions pinned here)"
         }' "$tmp/pip-stderr"
    return $status
}

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
# step NAME KEY: true when the stamp of step NAME does not match KEY (the step must run)
step_needed() { [[ ! -f $STAMPS/.stamp-$1 || $(cat "$STAMPS/.stamp-$1") != "$2" ]]; }
step_done() { echo "$2" > "$STAMPS/.stamp-$1"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

torch_version=
if [[ $mode != venv ]]; then
    # Bring-your-own torch: it must import, and pip may not change it.
    torch_version=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) \
        || die "$PY cannot import torch; install your torch build first (https://pytorch.org/get-started/locally/) or run without ${mode/system/--system-torch}${mode/current/--into-current-env}"
    "$PY" -c 'import torch; print(f"[setup_env] keeping torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}, built for CUDA {torch.version.cuda})")'
fi

key=$( (cat "$requirements"; echo "$mode $torch_version $offline") | sha256sum | cut -d' ' -f1)
if step_needed requirements "$key"; then
    pip_args=(-r "$requirements")
    if [[ $mode != venv ]]; then
        # the lock file without its torch (and the triton that comes with torch), and a constraint
        # that makes anything wanting another torch fail instead of replacing it
        grep -viE '^(torch|triton)[=<>~ ]|^--extra-index-url' "$requirements" > "$tmp/requirements.txt"
        echo "torch==$torch_version" > "$tmp/keep-torch.txt"
        pip_args=(-r "$tmp/requirements.txt" -c "$tmp/keep-torch.txt")
    else
        index=$(sed -n 's/^--extra-index-url[ =]*//p' "$requirements" | head -n 1)
        if [[ -n $index && -z $offline ]] && "$PY" scripts/pinned_torch_is_local.py "$requirements"; then
            echo "[setup_env] the pinned torch wheel is in pip's configured find-links: not using $index"
            index=local
        fi
        if [[ -n $offline || $index == local ]]; then
            grep -v '^--extra-index-url' "$requirements" > "$tmp/requirements.txt"
            pip_args=(-r "$tmp/requirements.txt")
        fi
    fi
    count=$(grep -cvE '^[[:space:]]*(#|-|$)' "$requirements" || true)
    big=$(grep -oiE '^(torch|numpy|sacrebleu|sentencepiece|matplotlib|hydra-core)==[^ ;#]+' "$requirements" \
          | grep -viE "$([[ $mode != venv ]] && echo '^torch=' || echo '^$')" | paste -sd' ' || true)
    echo "[setup_env] installing the $count pinned packages of $requirements${big:+ ($big, ...)}$([[ $mode != venv ]] && echo ", keeping torch $torch_version"); a few minutes on a new environment"
    pip_install "${pip_args[@]}"
    step_done requirements "$key"
fi

if [[ $fairseq == yes ]]; then
    # rebuilt when the patch, the build scripts or what it compiles against changes
    key=$( (cat "patches/fairseq-0.12.2.patch" scripts/install_fairseq.sh labo_fairseq/install.py;
            "$PY" -c 'import torch, numpy, Cython, setuptools; print(torch.__version__, numpy.__version__, Cython.__version__, setuptools.__version__)') \
          | sha256sum | cut -d' ' -f1)
    if step_needed fairseq "$key"; then
        echo "[setup_env] installing fairseq 0.12.2 built from its sdist with patches/fairseq-0.12.2.patch (about a minute to compile; seconds from the wheel cache)"
        bash scripts/install_fairseq.sh --python "$PY"
        step_done fairseq "$key"
    fi
fi

key=$(hash_of setup.py pyproject.toml)
if step_needed labo_fairseq "$key"; then
    echo "[setup_env] installing labo_fairseq (editable, --no-deps) and its console commands"
    pip_install --no-deps --no-build-isolation -e .
    check="import labo_fairseq; print('[setup_env] ok: labo_fairseq', labo_fairseq.__version__"
    [[ $fairseq == yes ]] && check="import torch, fairseq; $check, '| torch', torch.__version__, '| fairseq', fairseq.__version__"
    "$PY" -c "$check)"
    step_done labo_fairseq "$key"
fi
