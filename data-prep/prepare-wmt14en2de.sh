#!/usr/bin/env bash
# Prepares WMT'14 EN-DE (fairseq's prepare-wmt14en2de.sh recipe) into text and fairseq binary data.
# All logic lives in labo_fairseq/data_prep/wmt14.py; run with --help for the options.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$PYTHON" -m labo_fairseq.data_prep.wmt14 "$@"
