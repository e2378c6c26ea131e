#!/usr/bin/env bash
# `make demo`: the multi30k-cpu recipe end to end (Multi30k DE->EN, LS vs LABO, one seed each):
# prepare the data, train both, evaluate, analyse the long tail, write the report, print its
# headline. Raw Multi30k files come from DATA_DIR when set, else are downloaded when the network
# allows.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH

FILES=(train.de.gz train.en.gz val.de.gz val.en.gz test_2016_flickr.de.gz test_2016_flickr.en.gz)
if [[ -n ${DATA_DIR:-} ]]; then
    for f in "${FILES[@]}"; do
        [[ -f $DATA_DIR/$f ]] || { echo "demo: DATA_DIR=$DATA_DIR has no $f (needs ${FILES[*]})" >&2; exit 2; }
    done
    echo "[demo] Multi30k raw files from DATA_DIR=$DATA_DIR"
elif [[ ! -d data/data-bin/multi30k.de-en ]]; then
    echo "[demo] DATA_DIR is not set: downloading Multi30k into data/orig/multi30k/"
    if ! bash data-prep/prepare-multi30k.sh --out data; then
        cat >&2 <<MSG
demo: could not download Multi30k. Provide the raw files yourself: put
  ${FILES[*]}
from https://github.com/multi30k/dataset/tree/master/data/task1/raw into a directory and run
  make demo DATA_DIR=/path/to/that/directory
MSG
        exit 2
    fi
fi
start=$SECONDS
python scripts/run_experiment.py recipes/multi30k-cpu.toml --out runs/multi30k-cpu ${DATA_DIR:+--data-dir "$DATA_DIR"}
echo "[demo] finished in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
