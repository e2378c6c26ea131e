#!/usr/bin/env bash
# Downloads every wheel of the lock file, and the fairseq 0.12.2 sdist, into one directory that
# can be carried to a machine without network and installed there with
#     bash scripts/setup_env.sh --offline WHEELHOUSE
#
# usage: bash scripts/wheelhouse.sh [--dest DIR] [--python-version X.Y] [--platform TAG]
#                                   [--requirements FILE] [--no-fairseq]
#   --dest DIR            where the files go (default: wheelhouse)
#   --python-version X.Y  the target machine's Python (default: this one's)
#   --platform TAG        the target's platform tag, e.g. manylinux_2_28_x86_64 (default: this machine's)
#   --requirements FILE   the lock file (default: requirements.txt; its torch line is the CPU build)
#   --no-fairseq          skip the fairseq sdist
# Binary wheels only (--only-binary :all:), so that the target needs no compiler for them; the
# fairseq sdist is compiled there by install_fairseq.sh. PYTHON=... runs pip (default: .venv's).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=wheelhouse requirements=requirements.txt fairseq=yes target=()
PY=${PYTHON:-.venv/bin/python}
die() { echo "wheelhouse: error: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --dest) dest=${2:?--dest needs a directory}; shift 2 ;;
        --python-version) target+=(--python-version "${2:?--python-version needs X.Y}"); shift 2 ;;
        --platform) target+=(--platform "${2:?--platform needs a tag}"); shift 2 ;;
        --requirements) requirements=${2:?--requirements needs a file}; shift 2 ;;
        --no-fairseq) fairseq=no; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ -f $requirements ]] || die "requirements file $requirements does not exist"
command -v "$PY" >/dev/null || die "$PY not found; run make env first or set PYTHON"
mkdir -p "$dest"
PIP=("$PY" -m pip --disable-pip-version-check --quiet)

reqs=$requirements
index=$(sed -n 's/^--extra-index-url[ =]*//p' "$requirements" | head -n 1)
if [[ -n $index ]] && "$PY" "$(dirname "$0")/pinned_torch_is_local.py" "$requirements"; then
    echo "[wheelhouse] the pinned torch wheel is in pip's configured find-links: not using $index"
    reqs=$(mktemp)
    trap 'rm -f "$reqs"' EXIT
    grep -v '^--extra-index-url' "$requirements" > "$reqs"
fi
echo "[wheelhouse] downloading the wheels of $requirements into $dest ${target[*]}"
# --no-deps: the lock file already names every package, and pip cannot resolve dependencies for
# another platform anyway
"${PIP[@]}" download --no-deps --only-binary :all: "${target[@]}" -d "$dest" -r "$reqs"
if [[ $fairseq == yes ]]; then
    # the sdist is platform independent; --no-build-isolation: its metadata is prepared with this
    # environment's torch and numpy
    "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation -d "$dest" fairseq==0.12.2
fi
echo "[wheelhouse] $(ls "$dest" | wc -l) files in $dest; install with: bash scripts/setup_env.sh --offline $dest"
