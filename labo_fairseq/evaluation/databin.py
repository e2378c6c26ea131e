"""What evaluation needs to know about a fairseq data-bin directory: the language pair, whether
the subset was binarised, and how to decode subwords (from `prepare.json`, unless overridden).

CLI (used by scripts/evaluate.sh): prints `SOURCE_LANG TARGET_LANG POST_PROCESS` on one line.
"""
import argparse
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from labo_fairseq.errors import run_command
from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.subwords import POST_PROCESS_MODES, post_process_for
from labo_fairseq.textfiles import read_json_object


@dataclass(frozen=True)
class DataBinInfo:
    source_lang: str
    target_lang: str
    post_process: str          # fairseq --post-process mode: subword_nmt | sentencepiece | none
    subwords: Optional[str]    # prepare.json's "subwords", None when there is no prepare.json


@dataclass(frozen=True)
class Reference:
    """What sacreBLEU should score a subset against."""
    raw_path: Optional[Path]   # the untokenised test text as published; None when prepare.json has none
    lowercase: bool            # the pipeline lowercased the text, so the system can only be scored case-blind


def read_prepare_json(data_bin) -> Optional[dict]:
    path = Path(data_bin) / "prepare.json"
    if not path.is_file():
        return None
    return read_json_object(path, "data preparation record")


def binarised_pairs(data_bin, subset: str):
    """(src, tgt) pairs for which `{subset}.{src}-{tgt}.{tgt}.idx` exists (fairseq's naming)."""
    pattern = re.compile(rf"^{re.escape(subset)}\.([^.-]+)-([^.-]+)\.([^.]+)\.idx$")
    pairs = set()
    for path in Path(data_bin).iterdir():
        match = pattern.match(path.name)
        if match and match.group(3) == match.group(2):
            pairs.add((match.group(1), match.group(2)))
    return sorted(pairs)


def sentence_count(data_bin, subset: str, src: str, tgt: str) -> Optional[int]:
    """Sentences in a binarised split, from the header of fairseq's mmap index (None if unreadable):
    9-byte magic, version (u64), dtype code (u8), item count (u64)."""
    index = Path(data_bin) / f"{subset}.{src}-{tgt}.{src}.idx"
    try:
        with open(index, "rb") as handle:
            header = handle.read(26)
    except OSError:
        return None
    if len(header) < 26 or header[:9] != b"MMIDIDX\x00\x00":
        return None
    return struct.unpack("<Q", header[18:26])[0]


def split_size(data_bin, subset: str, target_lang: str, source_lang: Optional[str] = None) -> Optional[int]:
    """Sentences in `subset` of the one binarised pair translating into `target_lang` (and from
    `source_lang` when given); None when that pair is not unique or its index is unreadable."""
    if not Path(data_bin).is_dir():
        return None
    pairs = [(s, t) for s, t in binarised_pairs(data_bin, subset)
             if t == target_lang and (source_lang is None or s == source_lang)]
    if len(pairs) != 1:
        return None
    return sentence_count(data_bin, subset, *pairs[0])


def inspect_data_bin(data_bin, subset: str = "test", post_process: Optional[str] = None,
                     source_lang: Optional[str] = None, target_lang: Optional[str] = None) -> DataBinInfo:
    """Checks that `subset` is binarised in `data_bin` and resolves languages and decoding.

    Explicit arguments win over prepare.json, which wins over what the file names say.
    """
    data_bin = Path(data_bin)
    if data_bin.exists() and not data_bin.is_dir():
        raise EvaluationError(f"data-bin {data_bin} is a file, not a directory; give the directory "
                              f"fairseq-preprocess wrote")
    if not data_bin.is_dir():
        raise EvaluationError(f"data-bin directory {data_bin} does not exist")
    prepare = read_prepare_json(data_bin) or {}
    source_lang = source_lang or prepare.get("source_lang")
    target_lang = target_lang or prepare.get("target_lang")
    pairs = binarised_pairs(data_bin, subset)
    candidates = [(s, t) for s, t in pairs
                  if (source_lang is None or s == source_lang) and (target_lang is None or t == target_lang)]
    if not candidates:
        wanted = f"{source_lang or '*'}-{target_lang or '*'}"
        raise EvaluationError(
            f"data-bin {data_bin} has no binarised '{subset}' split for {wanted} "
            f"(expected {subset}.{wanted}.{target_lang or '*'}.idx/.bin; found pairs: "
            f"{', '.join(f'{s}-{t}' for s, t in pairs) or 'none'})")
    if len(candidates) > 1:
        raise EvaluationError(
            f"data-bin {data_bin} has several language pairs for '{subset}' "
            f"({', '.join(f'{s}-{t}' for s, t in candidates)}); pass --source-lang/--target-lang")
    source_lang, target_lang = candidates[0]
    subwords = prepare.get("subwords")
    if post_process is None:
        try:
            post_process = post_process_for(subwords)
        except ValueError as error:
            raise EvaluationError(f"{data_bin / 'prepare.json'}: {error}")
    elif post_process not in POST_PROCESS_MODES:
        raise EvaluationError(f"unknown post-process mode {post_process!r}; expected one of {POST_PROCESS_MODES}")
    return DataBinInfo(source_lang, target_lang, post_process, subwords)


def reference_for(data_bin, subset: str = "test") -> Reference:
    """The raw target reference of `subset` recorded in prepare.json ("raw_references": {split:
    path relative to the data-bin}) and whether the data was lowercased ("lowercase")."""
    data_bin = Path(data_bin)
    prepare = read_prepare_json(data_bin) or {}
    lowercase = bool(prepare.get("lowercase", False))
    relative = (prepare.get("raw_references") or {}).get(subset)
    if relative is None:
        return Reference(None, lowercase)
    path = data_bin / relative
    if not path.is_file():
        raise EvaluationError(f"{data_bin / 'prepare.json'} names raw reference {relative!r} for '{subset}', "
                              f"but {path} does not exist")
    return Reference(path, lowercase)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m labo_fairseq.evaluation.databin",
        description="Check a data-bin split and print 'SOURCE_LANG TARGET_LANG POST_PROCESS'.")
    parser.add_argument("data_bin")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--post-process", choices=POST_PROCESS_MODES,
                        help="override the decoding chosen from prepare.json")
    parser.add_argument("--source-lang")
    parser.add_argument("--target-lang")
    args = parser.parse_args(argv)
    info = inspect_data_bin(args.data_bin, args.subset, args.post_process, args.source_lang, args.target_lang)
    print(info.source_lang, info.target_lang, info.post_process)


if __name__ == "__main__":
    sys.exit(run_command("databin", main))
