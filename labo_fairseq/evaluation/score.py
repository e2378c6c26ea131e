"""Scores of a translated test set, computed the way the field reports them.

- `bleu`: tokenized BLEU exactly as `fairseq-generate` prints it (`BLEU4 = ...`): fairseq's
  scorer (reproduced in `tokenized_bleu`, so that scoring imports neither torch nor fairseq) on
  whitespace tokens of the post-processed (subwords removed) hypothesis and reference, the number
  IWSLT'14 papers quote.
- `sacrebleu`, `chrf`, `ter`: sacreBLEU's metrics on the Moses-detokenized hypothesis against the
  *raw* reference (the test set's target text as published, recorded by data preparation in
  `prepare.json`), so the numbers compare with anyone's sacreBLEU. When the data was lowercased
  the hypothesis cannot carry case, so all three are case-insensitive and the signatures say
  `case:lc`. Without a raw reference (a data-bin made elsewhere) they fall back to the detokenized
  binarised reference, and scores.json marks them `"comparable": false`.

CLI (used by scripts/evaluate.sh): reads the raw `fairseq-generate` output, restores sentence
order by id and writes OUT_DIR/{hyp,ref,src}.txt (what fairseq scored), the detokenized
OUT_DIR/{hyp,ref}.detok.txt, OUT_DIR/ref.raw.txt (the raw reference in the same order) and
OUT_DIR/scores.json, each file written aside and renamed, scores.json last. An incomplete output
(no final BLEU line, missing sentence ids, fewer sentences than the split of --data-bin) is an error.
"""
import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from labo_fairseq.errors import run_command
from labo_fairseq.evaluation.databin import reference_for, split_size
from labo_fairseq.evaluation.errors import EvaluationError, read_parallel
from labo_fairseq.evaluation.tokenized_bleu import tokenized_bleu
from labo_fairseq.textfiles import read_lines, write_json_atomic, write_text_atomic

SCORES_FILE = "scores.json"
# every text file the score CLI writes beside scores.json
TEXT_FILES = ("hyp.txt", "ref.txt", "src.txt", "hyp.detok.txt", "ref.detok.txt", "ref.raw.txt")

_LINE = re.compile(r"^([STHD])-(\d+)\t(.*)$", re.DOTALL)
_GENERATE_FINAL = re.compile(r"^Generate \S+ with beam=\d+: (.*)$")
_BLEU_STRING = re.compile(r"^BLEU\d+ = ")


@dataclass
class GenerateOutput:
    """Sentences of a fairseq-generate run, in sentence-id order."""
    ids: List[int]
    sources: List[str]
    references: List[str]
    hypotheses: List[str]                 # D- lines (post-processed, what fairseq scores), best only
    bleu_line: Optional[str] = None       # "BLEU4 = ..." as fairseq-generate printed it
    has_target: bool = True


def _id_list(ids: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return f"{shown}, ... ({len(ids)} in all)" if len(ids) > limit else shown


def parse_generate_output(text: str, origin: str = "generate output", expected: Optional[int] = None,
                          expected_from: str = "the split") -> GenerateOutput:
    """Parses S-/T-/D- lines of `fairseq-generate` stdout (any batch order) into id order.

    Only the first (best) D- line of each id is kept when --nbest > 1. The output must be whole:
    with references, fairseq-generate's final "Generate SUBSET with beam=N: ..." line must be
    there; sentence ids must be 0..n-1, each with a source and a hypothesis; and with `expected`
    (the split's sentence count, read from `expected_from`) n must equal it.
    """
    sources: Dict[int, str] = {}
    references: Dict[int, str] = {}
    hypotheses: Dict[int, str] = {}
    final_line = None
    for line in text.split("\n"):
        match = _LINE.match(line)
        if match:
            kind, sentence_id, rest = match.group(1), int(match.group(2)), match.group(3)
            if kind == "S":
                sources[sentence_id] = rest
            elif kind == "T":
                references[sentence_id] = rest
            elif kind == "D" and sentence_id not in hypotheses:
                # D-<id>\t<score>\t<text>; the text may be empty
                hypotheses[sentence_id] = rest.split("\t", 1)[1] if "\t" in rest else ""
            continue
        final_match = _GENERATE_FINAL.match(line.strip())
        if final_match:
            final_line = final_match.group(1)
    if not hypotheses:
        raise EvaluationError(f"{origin} has no hypotheses (no D-<id> lines)")
    if references and final_line is None:
        raise EvaluationError(f"{origin} is incomplete: no final 'Generate ... with beam=N: BLEU4 = ...' line "
                              f"(fairseq-generate stopped after {len(hypotheses)} sentences)")
    ids = sorted(hypotheses)
    missing_refs = [i for i in ids if i not in references]
    if references and missing_refs:
        raise EvaluationError(f"{origin}: sentence ids {missing_refs[:5]} have a hypothesis but no T- line")
    without_hypothesis = sorted(set(sources) - set(hypotheses))
    if without_hypothesis:
        raise EvaluationError(f"{origin} is incomplete: sentence ids {_id_list(without_hypothesis)} have a source "
                              f"(S- line) but no hypothesis (D- line)")
    if ids != list(range(len(ids))):
        gaps = sorted(set(range(ids[-1] + 1)) - set(ids))
        raise EvaluationError(f"{origin}: sentence ids are not 0..{len(ids) - 1}: ids {_id_list(gaps)} are missing "
                              f"(highest id {ids[-1]}, {len(ids)} sentences)")
    if expected is not None and len(ids) != expected:
        raise EvaluationError(f"{origin} has {len(ids)} sentences but {expected_from} has {expected}")
    bleu_line = final_line if final_line is not None and _BLEU_STRING.match(final_line) else None
    return GenerateOutput(
        ids=ids,
        sources=[sources.get(i, "") for i in ids],
        references=[references.get(i, "") for i in ids],
        hypotheses=[hypotheses[i] for i in ids],
        bleu_line=bleu_line,
        has_target=bool(references),
    )


def detokenize(lines: Sequence[str], lang: str) -> List[str]:
    """Moses detokenization (sacremoses) for the target language; also unescapes &apos; etc."""
    from sacremoses import MosesDetokenizer

    detokenizer = MosesDetokenizer(lang=lang)
    return [detokenizer.detokenize(line.split()) for line in lines]


def sacrebleu_metrics(lowercase: bool = False) -> dict:
    """sacreBLEU's BLEU, chrF and TER, case-insensitive when `lowercase` (TER already is by default)."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    return {"sacrebleu": BLEU(lowercase=lowercase), "chrf": CHRF(lowercase=lowercase), "ter": TER()}


def sacrebleu_command(reference: str, hypothesis: str, lowercase: bool) -> str:
    """The sacrebleu CLI call that reproduces sacrebleu_scores (its -lc covers BLEU only)."""
    flags = " -lc --chrf-lowercase" if lowercase else ""
    return f"sacrebleu {reference} -i {hypothesis} -m bleu chrf ter{flags}"


def sacrebleu_scores(hypotheses: Sequence[str], references: Sequence[str], lowercase: bool = False) -> dict:
    """sacreBLEU BLEU, chrF and TER (default settings, one reference) with their signatures;
    `sacrebleu` also has the lengths sacreBLEU's BLEU counted and their ratio."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise EvaluationError(f"sacreBLEU needs equally many (>0) hypotheses and references, "
                              f"got {len(hypotheses)} and {len(references)}")
    scores = {}
    for name, metric in sacrebleu_metrics(lowercase).items():
        result = metric.corpus_score(list(hypotheses), [list(references)])
        signature = str(metric.get_signature())
        scores[name] = {"score": result.score, "signature": signature,
                        "string": result.format(signature=signature)}
        if name == "sacrebleu":
            scores[name].update(sys_len=result.sys_len, ref_len=result.ref_len,
                                length_ratio=result.sys_len / result.ref_len if result.ref_len else None)
    return scores


def score_texts(hypotheses: Sequence[str], references: Sequence[str], target_lang: str,
                raw_references: Optional[Sequence[str]] = None, raw_path: Optional[str] = None,
                lowercase: bool = False, files: Optional[Dict[str, List[str]]] = None) -> dict:
    """All scores of scores.json for post-processed (subword-free) hypothesis/reference lines.

    sacreBLEU metrics use `raw_references` (the published text) when given, else the detokenized
    `references`. With `files` (a dict), the texts behind the scores are added to it by file name:
    hyp.detok.txt, ref.detok.txt and, with a raw reference, ref.raw.txt."""
    if raw_references is not None and len(raw_references) != len(hypotheses):
        raise EvaluationError(f"raw reference {raw_path} has {len(raw_references)} lines for "
                              f"{len(hypotheses)} hypotheses")
    hyp_detok = detokenize(hypotheses, target_lang)
    ref_detok = detokenize(references, target_lang)
    if files is not None:
        files["hyp.detok.txt"] = hyp_detok
        files["ref.detok.txt"] = ref_detok
        if raw_references is not None:
            files["ref.raw.txt"] = list(raw_references)
    sacre_refs = ref_detok if raw_references is None else list(raw_references)
    ref_file = "ref.detok.txt" if raw_references is None else "ref.raw.txt"
    reference = {"kind": "detokenized" if raw_references is None else "raw",
                 "path": None if raw_references is None else str(raw_path), "file": ref_file,
                 "lowercase": lowercase, "comparable": raw_references is not None}
    return {
        "num_sentences": len(hypotheses),
        "target_lang": target_lang,
        "bleu": tokenized_bleu(hypotheses, references),
        **sacrebleu_scores(hyp_detok, sacre_refs, lowercase),
        "reference": reference,
        "sacrebleu_command": sacrebleu_command(ref_file, "hyp.detok.txt", lowercase),
        "detokenizer": "sacremoses",
    }


def write_outputs(out_dir, files: Dict[str, Sequence[str]], scores: dict, stale: Sequence[str] = ()) -> None:
    """Writes the text files and then scores.json into out_dir, each one atomically.

    scores.json is removed first and written last, so it is there only beside the text files it
    describes; the files named in `stale` that this scoring does not write (left by an earlier
    one) are removed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SCORES_FILE).unlink(missing_ok=True)
    for name in stale:
        if name not in files:
            (out_dir / name).unlink(missing_ok=True)
    for name, lines in files.items():
        write_text_atomic(out_dir / name, "".join(line + "\n" for line in lines))
    write_json_atomic(out_dir / SCORES_FILE, scores)


def read_raw_reference(path, ids: Sequence[int]) -> List[str]:
    """The raw reference lines of sentence ids `ids` (fairseq's ids are line numbers from 0)."""
    lines = read_lines(path, "raw reference", allow_empty=False)
    if len(lines) != len(ids) or (ids and ids[-1] >= len(lines)):
        raise EvaluationError(f"raw reference {path} has {len(lines)} lines but the translated split has "
                              f"{len(ids)} sentences (ids up to {ids[-1] if ids else '-'}); it is not this split's")
    return [lines[i] for i in ids]


def evaluate_generate_output(generate_out, out_dir, target_lang: str, metadata: Optional[dict] = None,
                             raw_reference=None, lowercase: bool = False, expected: Optional[int] = None,
                             expected_from: str = "the split") -> dict:
    """Turns a saved fairseq-generate stdout into OUT_DIR/{hyp,ref,src}.txt, the detokenized
    files and OUT_DIR/scores.json (returned). `metadata` (subset, beam, ...) goes into scores.json;
    `raw_reference` is the split's untokenised target file for sacreBLEU; `expected` is the
    split's sentence count (read from `expected_from`), which the output must match."""
    generate_out, out_dir = Path(generate_out), Path(out_dir)
    text = "\n".join(read_lines(generate_out, "fairseq-generate output", allow_empty=False))
    output = parse_generate_output(text, str(generate_out), expected, expected_from)
    if not output.has_target:
        raise EvaluationError(f"{generate_out} has no references (T- lines); the split has no target side")
    raw_lines = None if raw_reference is None else read_raw_reference(raw_reference, output.ids)
    files = {"hyp.txt": output.hypotheses, "ref.txt": output.references, "src.txt": output.sources}
    scores = {**(metadata or {}),
              **score_texts(output.hypotheses, output.references, target_lang, raw_lines, raw_reference,
                            lowercase, files),
              "generate_bleu": output.bleu_line}
    if output.bleu_line is not None and output.bleu_line != scores["bleu"]["string"]:
        # Should never happen; if it does, the files would not reproduce the logged number.
        print(f"warning: BLEU recomputed from {out_dir / 'hyp.txt'} ({scores['bleu']['string']}) differs "
              f"from fairseq-generate's ({output.bleu_line})", file=sys.stderr)
    write_outputs(out_dir, files, scores, stale=TEXT_FILES)
    return scores


def _reference(data_bin, subset: str, raw_ref, lowercase: bool):
    """(raw reference, lowercase): as given, else what `data_bin`'s prepare.json says for `subset`."""
    if data_bin:
        reference = reference_for(data_bin, subset)
        raw_ref = raw_ref or reference.raw_path
        lowercase = lowercase or reference.lowercase
    return raw_ref, lowercase


def print_scores(scores: dict, out_dir, raw_ref) -> None:
    print(f"BLEU (tokenized, fairseq): {scores['bleu']['string']}")
    print(scores["sacrebleu"]["string"])
    print(scores["chrf"]["string"])
    print(scores["ter"]["string"])
    print(f"reproduce in {out_dir}: {scores['sacrebleu_command']}")
    if raw_ref is None:
        print("warning: no raw reference (prepare.json names none for this split); sacreBLEU scored the "
              "detokenized reference and is not comparable with published sacreBLEU", file=sys.stderr)


def score_generate_output(generate_out, out_dir, target_lang: str, source_lang: Optional[str] = None,
                          data_bin=None, subset: str = "test", raw_ref=None, lowercase: bool = False,
                          metadata: Optional[dict] = None) -> dict:
    """What the CLI's --generate-out does, with typed arguments: scores a saved fairseq-generate
    stdout into OUT_DIR (evaluate_generate_output) and prints the scores. With `data_bin`, the
    output must hold every sentence of its split `subset`, and the raw reference and lowercasing
    come from its prepare.json unless given."""
    raw_ref, lowercase = _reference(data_bin, subset, raw_ref, lowercase)
    expected = None if not data_bin else split_size(data_bin, subset, target_lang, source_lang)
    scores = evaluate_generate_output(generate_out, out_dir, target_lang, metadata, raw_ref, lowercase, expected,
                                      f"split '{subset}' of data-bin {data_bin}")
    print_scores(scores, out_dir, raw_ref)
    return scores


def parse_meta(items: Sequence[str]) -> dict:
    metadata = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EvaluationError(f"--meta expects KEY=VALUE, got {item!r}")
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError:
            metadata[key] = value
    return metadata


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m labo_fairseq.evaluation.score",
        description="Score translations: from a fairseq-generate output (--generate-out) or from "
                    "hypothesis/reference files (--hyp/--ref); writes scores.json.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--generate-out", help="saved stdout of fairseq-generate (S-/T-/H-/D- lines)")
    source.add_argument("--hyp", help="hypothesis file, subwords removed (needs --ref)")
    parser.add_argument("--ref", help="reference file for --hyp")
    parser.add_argument("--target-lang", required=True, help="language of the sacremoses detokenizer")
    parser.add_argument("--raw-ref", help="untokenised reference sacreBLEU scores against "
                                          "(default: from --data-bin's prepare.json)")
    parser.add_argument("--data-bin", help="data-bin whose prepare.json names the raw reference of --subset "
                                           "and says whether the text was lowercased")
    parser.add_argument("--subset", default="test",
                        help="split of --data-bin that was translated: its raw reference is scored against, "
                             "and --generate-out must hold all its sentences")
    parser.add_argument("--source-lang", help="source language of the split in --data-bin (needed only when "
                                              "several language pairs translate into --target-lang)")
    parser.add_argument("--lowercase", action="store_true",
                        help="case-insensitive sacreBLEU (default: prepare.json's \"lowercase\")")
    parser.add_argument("--out-dir", required=True, help="where scores.json (and text files) go")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="recorded in scores.json (VALUE parsed as JSON if it is JSON, else a string)")
    args = parser.parse_args(argv)
    metadata = parse_meta(args.meta)
    if args.generate_out:
        score_generate_output(args.generate_out, args.out_dir, args.target_lang, args.source_lang, args.data_bin,
                              args.subset, args.raw_ref, args.lowercase, metadata)
        return
    if not args.ref:
        parser.error("--hyp needs --ref")
    raw_ref, lowercase = _reference(args.data_bin, args.subset, args.raw_ref, args.lowercase)
    hypotheses, references = read_parallel(args.hyp, args.ref)
    raw_lines = None if raw_ref is None else read_raw_reference(raw_ref, list(range(len(hypotheses))))
    files: Dict[str, List[str]] = {}
    scores = {**metadata, "hyp": args.hyp, "ref": args.ref,
              **score_texts(hypotheses, references, args.target_lang, raw_lines, raw_ref, lowercase, files)}
    write_outputs(args.out_dir, files, scores)
    print_scores(scores, args.out_dir, raw_ref)


if __name__ == "__main__":
    sys.exit(run_command("score", main))
