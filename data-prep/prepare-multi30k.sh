#!/usr/bin/env bash
# Prepares Multi30k task-1 DE-EN into text and fairseq binary data.
# All logic lives in labo_fairseq/data_prep/multi30k.py; run with --help for the options.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$PYTHON" -m labo_fairseq.data_prep.multi30k "$@"
