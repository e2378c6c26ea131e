#!/usr/bin/env bash
# Translate a data-bin split with fairseq-generate and score it: what the `labo-evaluate` command
# does, run from this checkout (labo_fairseq/evaluation/evaluate.py). See --help.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../data-prep/env.sh"
exec "$PYTHON" -m labo_fairseq.cli --prog scripts/evaluate.sh evaluate "$@"
