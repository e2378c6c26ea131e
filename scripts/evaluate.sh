#!/usr/bin/env bash
# Translate a data-bin split with fairseq-generate and score it (tokenized BLEU as fairseq prints
# it; sacreBLEU, chrF and TER of the Moses-detokenized output against the raw reference). The parsing, ordering and scoring is done by
# `python -m labo_fairseq.evaluation.score`; this script only orchestrates.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/evaluate.sh DATA_BIN CHECKPOINT OUT_DIR [options] [-- EXTRA_FAIRSEQ_GENERATE_ARGS...]

Translates the DATA_BIN split with CHECKPOINT and writes to OUT_DIR:
  generate.out   raw fairseq-generate stdout (its last line is fairseq's BLEU4)
  generate.log   fairseq-generate stderr (logging)
  hyp.txt ref.txt src.txt        subword-free text in sentence-id order (what fairseq scored)
  hyp.detok.txt  Moses-detokenized hypotheses (what sacreBLEU scored)
  ref.raw.txt    the raw reference sacreBLEU scored against (from DATA_BIN/prepare.json or --raw-ref)
  ref.detok.txt  the detokenized binarised reference (sacreBLEU's fallback without a raw reference)
  scores.json    {"bleu": ..., "sacrebleu": ..., "chrf": ..., "ter": ..., "reference": ..., ...}
                 written last: an earlier scores.json/longtail.json in OUT_DIR is removed first

options:
  --subset NAME          split to translate (default: test)
  --beam N               beam size (default: 5)
  --lenpen X             length penalty (default: 1.0)
  --batch-size N         sentences per batch (default: 128)
  --cpu                  run on CPU
  --post-process MODE    subword decoding: subword_nmt | sentencepiece | none
                         (default: from DATA_BIN/prepare.json "subwords", else subword_nmt)
  --source-lang L, --target-lang L   language pair (default: prepare.json / file names)
  --raw-ref FILE         untokenised reference for sacreBLEU (default: prepare.json's raw_references)
  --lowercase            case-insensitive sacreBLEU (default: prepare.json's "lowercase")
  -h, --help             this help
Arguments after `--` go to fairseq-generate unchanged. `--user-dir <repo>/labo_fairseq` is
always passed so that checkpoints of labo_fairseq models and criteria load.
EOF
}

die() { echo "evaluate.sh: error: $*" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x "$REPO/.venv/bin/python" ]]; then
    export PATH="$REPO/.venv/bin:$PATH"
fi

positional=()
subset=test beam=5 lenpen=1.0 batch_size=128 cpu=() post_process=() langs=() extra=() reference=()
while [[ $# -gt 0 ]]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --subset) subset=${2:?--subset needs a value}; shift 2 ;;
        --beam) beam=${2:?--beam needs a value}; shift 2 ;;
        --lenpen) lenpen=${2:?--lenpen needs a value}; shift 2 ;;
        --batch-size) batch_size=${2:?--batch-size needs a value}; shift 2 ;;
        --cpu) cpu=(--cpu); shift ;;
        --post-process) post_process=(--post-process "${2:?--post-process needs a value}"); shift 2 ;;
        --source-lang|--target-lang) langs+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
        --raw-ref) reference+=(--raw-ref "${2:?--raw-ref needs a value}"); shift 2 ;;
        --lowercase) reference+=(--lowercase); shift ;;
        --) shift; extra=("$@"); break ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) positional+=("$1"); shift ;;
    esac
done
[[ ${#positional[@]} -eq 3 ]] || { usage >&2; die "expected DATA_BIN CHECKPOINT OUT_DIR, got ${#positional[@]} arguments"; }
data_bin=${positional[0]} checkpoint=${positional[1]} out_dir=${positional[2]}

[[ -f $checkpoint ]] || die "checkpoint $checkpoint does not exist"
# Checks the split exists and prints "SRC TGT POST_PROCESS" (prepare.json decides the decoding).
settings=$(python -m labo_fairseq.evaluation.databin "$data_bin" --subset "$subset" \
    "${post_process[@]}" "${langs[@]}") || exit $?
read -r source_lang target_lang mode <<<"$settings"

mkdir -p "$out_dir"
# Results of an earlier evaluation must not survive a failed one and look current.
rm -f "$out_dir/scores.json" "$out_dir/longtail.json"
echo "evaluate.sh: translating $data_bin [$subset, $source_lang-$target_lang, post-process $mode] with $checkpoint" >&2
if ! fairseq-generate "$data_bin" --path "$checkpoint" --user-dir "$REPO/labo_fairseq" \
        --gen-subset "$subset" --source-lang "$source_lang" --target-lang "$target_lang" \
        --beam "$beam" --lenpen "$lenpen" --batch-size "$batch_size" --post-process "$mode" \
        "${cpu[@]}" "${extra[@]}" >"$out_dir/generate.out" 2>"$out_dir/generate.log"; then
    tail -n 20 "$out_dir/generate.log" >&2
    die "fairseq-generate failed; full log in $out_dir/generate.log"
fi

python -m labo_fairseq.evaluation.score --generate-out "$out_dir/generate.out" --out-dir "$out_dir" \
    --target-lang "$target_lang" --data-bin "$data_bin" --subset "$subset" "${reference[@]}" --meta "subset=$subset" --meta "beam=$beam" --meta "lenpen=$lenpen" \
    --meta "post_process=$mode" --meta "source_lang=$source_lang" \
    --meta "checkpoint=$checkpoint" --meta "data_bin=$data_bin"
