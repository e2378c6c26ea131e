#!/usr/bin/env bash
# The GPU checks in one call, for a CUDA machine where torch, triton and the patched fairseq
# already import (see README, "On a GPU machine"): the op and criterion tests on CUDA, the loss-op
# benchmark against fairseq's label smoothing (and Liger-Kernel / Apple CCE when installed) beside
# the roofline model and the offline compile report (the numbers it measures can be put next to
# the predicted ones), and fairseq-train words/s and peak memory for LS vs LABO in fp16 and bf16.
# Results go to OUT_DIR.
#
# --quality instead runs only recipes/multi30k-gpu-quick.toml (every method x 3 seeds on Multi30k,
# sized for <= 12 min on one H100/H200) with the Multi30k raw files of RAW_DIR (or $DATA_DIR; the
# machine needs no network), into runs/multi30k-gpu-quick; its report, experiment.json, console
# output and wall time are copied to OUT_DIR. Runs finished by an earlier call are skipped.
#
# usage: bash scripts/gpu_check.sh OUT_DIR [--quick]     (--quick: one shape, one vocabulary, fewer updates)
#        bash scripts/gpu_check.sh OUT_DIR --quality [RAW_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu_check.sh OUT_DIR [--quick | --quality [RAW_DIR]]}
quick=${2:-}
if [[ $quick == --quality ]]; then
    raw=${3:-${DATA_DIR:-}}
    [[ -d $raw ]] || { echo "gpu_check: --quality needs the Multi30k raw directory (RAW_DIR or \$DATA_DIR), got '$raw'" >&2; exit 2; }
fi
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

$PY -c "import torch, triton, fairseq; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, '| triton', triton.__version__, '| fairseq', fairseq.__version__, '|', torch.cuda.get_device_name())" \
    | tee "$out/versions.txt" || { echo "gpu_check: torch with CUDA, triton and fairseq must import" >&2; exit 2; }

if [[ $quick == --quality ]]; then
    # the recipe's [data] prepare runs labo-prepare; a checkout used through PYTHONPATH has no such
    # console command, so one that runs the module stands in for it
    if ! command -v labo-prepare > /dev/null; then
        shims=$(mktemp -d)
        printf '#!/bin/sh\nexec %q -m labo_fairseq.cli --prog labo-prepare prepare "$@"\n' "$(command -v "$PY")" \
            > "$shims/labo-prepare"
        chmod +x "$shims/labo-prepare"
        export PATH=$shims:$PATH
    fi
    # the recipe's --jobs (see its sizing comment)
    echo "== quality: recipes/multi30k-gpu-quick.toml, --jobs 9"
    start=$(date +%s)
    $PY scripts/run_experiment.py recipes/multi30k-gpu-quick.toml --jobs 9 --data-dir "$raw" 2>&1 \
        | tee "$out/quality.txt"
    status=${PIPESTATUS[0]}
    echo "wall time: $(( $(date +%s) - start )) s (sized for <= 720 s)" | tee -a "$out/quality.txt"
    mkdir -p "$out/quality-report" && cp -rT runs/multi30k-gpu-quick/report "$out/quality-report" 2>/dev/null
    cp runs/multi30k-gpu-quick/experiment.json "$out/" 2>/dev/null
    exit "$status"
fi

status=0
echo "== tests on CUDA"
# several workers compile the Triton kernels' configurations in parallel (pytest-xdist, if there)
workers=(); $PY -c "import xdist" 2>/dev/null && workers=(-n 8)
timeout 200 $PY -m pytest -q -x -p no:cacheprovider "${workers[@]}" tests/functional \
    tests/criterions/test_label_smoothed_labo.py 2>&1 | tee "$out/tests.txt" | tail -n 5
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1

echo "== compile report and roofline model (predictions, for comparison with the timings below)"
$PY -m labo_fairseq.benchmarks.kernels --arch sm_90 --json "$out/kernels.json" > "$out/kernels.txt" 2>&1 || status=1
$PY scripts/bench_loss.py --model --shapes gpu > "$out/roofline.txt" 2>&1 || status=1
tail -n 8 "$out/roofline.txt"

echo "== loss op"
shapes=(gpu); [[ $quick == --quick ]] && shapes=(8192x32768)
$PY scripts/bench_loss.py --device cuda --shapes "${shapes[@]}" --json "$out/bench_loss.json" 2>&1 \
    | tee "$out/bench_loss.txt" | grep -v '^#' || status=1

echo "== fairseq-train"
updates=300 vocab=(8000 32000); [[ $quick == --quick ]] && updates=100 vocab=(32000)
for precision in fp16 bf16; do
    $PY scripts/bench_train.py --device cuda --precision "$precision" --vocab "${vocab[@]}" --max-tokens 8192 \
        --layers 6 --dim 512 --updates "$updates" --repeats 1 --out "$out/bench_train.$precision.json" 2>&1 \
        | tee "$out/bench_train.$precision.txt" | grep -v '^#' || status=1
done
exit $status
