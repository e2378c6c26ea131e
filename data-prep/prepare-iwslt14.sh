#!/usr/bin/env bash
# Prepares IWSLT'14 DE-EN (fairseq's prepare-iwslt14.sh recipe) into text and fairseq binary data.
# All logic lives in labo_fairseq/data_prep/iwslt14.py; run with --help for the options.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$PYTHON" -m labo_fairseq.data_prep.iwslt14 "$@"
