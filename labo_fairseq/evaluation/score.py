"""Scores of a translated test set, computed the way the field reports them.

- `bleu`: tokenized BLEU exactly as `fairseq-generate` prints it (`BLEU4 = ...`): fairseq's own
  scorer on whitespace tokens of the post-processed (subwords removed) hypothesis and reference,
  the number IWSLT'14 papers quote.
- `sacrebleu`, `chrf`, `ter`: sacreBLEU's metrics on the Moses-detokenized hypothesis against the
  *raw* reference (the test set's target text as published, recorded by data preparation in
  `prepare.json`), so the numbers compare with anyone's sacreBLEU. When the data was lowercased
  the hypothesis cannot carry case, so all three are case-insensitive and the signatures say
  `case:lc`. Without a raw reference (a data-bin made elsewhere) they fall back to the detokenized
  binarised reference, and scores.json marks them `"comparable": false`.

CLI (used by scripts/evaluate.sh): reads the raw `fairseq-generate` output, restores sentence
order by id and writes OUT_DIR/{hyp,ref,src}.txt (what fairseq scored), the detokenized
OUT_DIR/{hyp,ref}.detok.txt, OUT_DIR/ref.raw.txt (the raw reference in the same order) and
OUT_DIR/scores.json.
"""
import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from labo_fairseq.evaluation.databin import reference_for
from labo_fairseq.cli.errors import run_command
from labo_fairseq.evaluation.errors import EvaluationError, read_parallel
from labo_fairseq.textfiles import read_lines

SCORES_FILE = "scores.json"

_LINE = re.compile(r"^([STHD])-(\d+)\t(.*)$", re.DOTALL)
_GENERATE_BLEU = re.compile(r"^Generate \S+ with beam=\d+: (BLEU\d+ = .*)$")


@dataclass
class GenerateOutput:
    """Sentences of a fairseq-generate run, in sentence-id order."""
    ids: List[int]
    sources: List[str]
    references: List[str]
    hypotheses: List[str]                 # D- lines (post-processed, what fairseq scores), best only
    bleu_line: Optional[str] = None       # "BLEU4 = ..." as fairseq-generate printed it
    has_target: bool = True


def parse_generate_output(text: str, origin: str = "generate output") -> GenerateOutput:
    """Parses S-/T-/D- lines of `fairseq-generate` stdout (any batch order) into id order.

    Only the first (best) D- line of each id is kept when --nbest > 1.
    """
    sources: Dict[int, str] = {}
    references: Dict[int, str] = {}
    hypotheses: Dict[int, str] = {}
    bleu_line = None
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
        bleu_match = _GENERATE_BLEU.match(line.strip())
        if bleu_match:
            bleu_line = bleu_match.group(1)
    if not hypotheses:
        raise EvaluationError(f"{origin} has no hypotheses (no D-<id> lines)")
    ids = sorted(hypotheses)
    missing_refs = [i for i in ids if i not in references]
    if references and missing_refs:
        raise EvaluationError(f"{origin}: sentence ids {missing_refs[:5]} have a hypothesis but no T- line")
    return GenerateOutput(
        ids=ids,
        sources=[sources.get(i, "") for i in ids],
        references=[references.get(i, "") for i in ids],
        hypotheses=[hypotheses[i] for i in ids],
        bleu_line=bleu_line,
        has_target=bool(references),
    )


def tokenized_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """fairseq's BLEU on whitespace tokens, as fairseq-generate and fairseq-score compute it.

    A fresh fairseq Dictionary maps tokens to ids, as fairseq-score does; only token equality
    matters, so this equals fairseq-generate's scoring with the model's dictionary, including
    its quirks: reference `<unk>` never matches, and an empty line counts as one token (</s>).
    """
    if len(hypotheses) != len(references) or not hypotheses:
        raise EvaluationError(f"tokenized BLEU needs equally many (>0) hypotheses and references, "
                              f"got {len(hypotheses)} and {len(references)}")
    from fairseq.data import Dictionary  # noqa: WPS433  (import is slow; only needed here)
    from fairseq.scoring import bleu

    dictionary = Dictionary()
    scorer = bleu.Scorer(bleu.BleuConfig(pad=dictionary.pad(), eos=dictionary.eos(), unk=dictionary.unk()))
    for hyp, ref in zip(hypotheses, references):
        scorer.add(dictionary.encode_line(ref, add_if_not_exist=True),
                   dictionary.encode_line(hyp, add_if_not_exist=True))
    return {
        "score": scorer.score(),
        "precisions": [float(p * 100) for p in scorer.precision()],
        "bp": scorer.brevity(),
        "sys_len": int(scorer.stat.predlen),
        "ref_len": int(scorer.stat.reflen),
        "string": scorer.result_string(),
    }


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


def write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def score_texts(hypotheses: Sequence[str], references: Sequence[str], target_lang: str,
                out_dir: Optional[Path] = None, raw_references: Optional[Sequence[str]] = None,
                raw_path: Optional[str] = None, lowercase: bool = False) -> dict:
    """All scores of scores.json for post-processed (subword-free) hypothesis/reference lines.

    sacreBLEU metrics use `raw_references` (the published text) when given, else the detokenized
    `references`. With `out_dir`, also writes hyp.detok.txt, ref.detok.txt and ref.raw.txt."""
    hyp_detok = detokenize(hypotheses, target_lang)
    ref_detok = detokenize(references, target_lang)
    if raw_references is not None and len(raw_references) != len(hypotheses):
        raise EvaluationError(f"raw reference {raw_path} has {len(raw_references)} lines for "
                              f"{len(hypotheses)} hypotheses")
    if out_dir is not None:
        write_lines(out_dir / "hyp.detok.txt", hyp_detok)
        write_lines(out_dir / "ref.detok.txt", ref_detok)
        if raw_references is not None:
            write_lines(out_dir / "ref.raw.txt", raw_references)
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


def read_raw_reference(path, ids: Sequence[int]) -> List[str]:
    """The raw reference lines of sentence ids `ids` (fairseq's ids are line numbers from 0)."""
    lines = read_lines(path, "raw reference", allow_empty=False)
    if len(lines) != len(ids) or (ids and ids[-1] >= len(lines)):
        raise EvaluationError(f"raw reference {path} has {len(lines)} lines but the translated split has "
                              f"{len(ids)} sentences (ids up to {ids[-1] if ids else '-'}); it is not this split's")
    return [lines[i] for i in ids]


def evaluate_generate_output(generate_out, out_dir, target_lang: str, metadata: Optional[dict] = None,
                             raw_reference=None, lowercase: bool = False) -> dict:
    """Turns a saved fairseq-generate stdout into OUT_DIR/{hyp,ref,src}.txt, the detokenized
    files and OUT_DIR/scores.json (returned). `metadata` (subset, beam, ...) goes into scores.json;
    `raw_reference` is the split's untokenised target file for sacreBLEU."""
    generate_out, out_dir = Path(generate_out), Path(out_dir)
    text = "\n".join(read_lines(generate_out, "fairseq-generate output", allow_empty=False))
    output = parse_generate_output(text, origin=str(generate_out))
    if not output.has_target:
        raise EvaluationError(f"{generate_out} has no references (T- lines); the split has no target side")
    raw_lines = None if raw_reference is None else read_raw_reference(raw_reference, output.ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_lines(out_dir / "hyp.txt", output.hypotheses)
    write_lines(out_dir / "ref.txt", output.references)
    write_lines(out_dir / "src.txt", output.sources)
    scores = {**(metadata or {}),
              **score_texts(output.hypotheses, output.references, target_lang, out_dir, raw_lines,
                            raw_reference, lowercase),
              "generate_bleu": output.bleu_line}
    if output.bleu_line is not None and output.bleu_line != scores["bleu"]["string"]:
        # Should never happen; if it does, the files would not reproduce the logged number.
        print(f"warning: BLEU recomputed from {out_dir / 'hyp.txt'} ({scores['bleu']['string']}) differs "
              f"from fairseq-generate's ({output.bleu_line})", file=sys.stderr)
    write_scores(out_dir / SCORES_FILE, scores)
    return scores


def write_scores(path: Path, scores: dict) -> None:
    """Written aside and renamed: a half-written scores.json never looks like a finished evaluation."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(scores, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    part.replace(path)


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
    parser.add_argument("--subset", default="test", help="split whose raw reference --data-bin gives")
    parser.add_argument("--lowercase", action="store_true",
                        help="case-insensitive sacreBLEU (default: prepare.json's \"lowercase\")")
    parser.add_argument("--out-dir", required=True, help="where scores.json (and text files) go")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="recorded in scores.json (VALUE parsed as JSON if it is JSON, else a string)")
    args = parser.parse_args(argv)
    metadata = parse_meta(args.meta)
    raw_ref, lowercase = args.raw_ref, args.lowercase
    if args.data_bin:
        reference = reference_for(args.data_bin, args.subset)
        raw_ref = raw_ref or reference.raw_path
        lowercase = lowercase or reference.lowercase
    if args.generate_out:
        scores = evaluate_generate_output(args.generate_out, args.out_dir, args.target_lang, metadata,
                                          raw_ref, lowercase)
    else:
        if not args.ref:
            parser.error("--hyp needs --ref")
        hypotheses, references = read_parallel(args.hyp, args.ref)
        raw_lines = None if raw_ref is None else read_raw_reference(raw_ref, list(range(len(hypotheses))))
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        scores = {**metadata, "hyp": args.hyp, "ref": args.ref,
                  **score_texts(hypotheses, references, args.target_lang, out_dir, raw_lines, raw_ref, lowercase)}
        write_scores(out_dir / SCORES_FILE, scores)
    print(f"BLEU (tokenized, fairseq): {scores['bleu']['string']}")
    print(scores["sacrebleu"]["string"])
    print(scores["chrf"]["string"])
    print(scores["ter"]["string"])
    print(f"reproduce in {args.out_dir}: {scores['sacrebleu_command']}")
    if raw_ref is None:
        print("warning: no raw reference (prepare.json names none for this split); sacreBLEU scored the "
              "detokenized reference and is not comparable with published sacreBLEU", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_command("score", main))
