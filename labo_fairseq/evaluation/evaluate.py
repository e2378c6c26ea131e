"""Translate a data-bin split with fairseq-generate and score it: tokenized BLEU as fairseq prints
it; sacreBLEU, chrF and TER of the Moses-detokenized output against the raw reference.

`labo-evaluate` (and scripts/evaluate.sh, which runs this) writes to OUT_DIR:
  generate.out   raw fairseq-generate stdout (its last line is fairseq's BLEU4)
  generate.log   fairseq-generate stderr (logging)
  hyp.txt ref.txt src.txt        subword-free text in sentence-id order (what fairseq scored)
  hyp.detok.txt  Moses-detokenized hypotheses (what sacreBLEU scored)
  ref.raw.txt    the raw reference sacreBLEU scored against (from DATA_BIN/prepare.json or --raw-ref)
  ref.detok.txt  the detokenized binarised reference (sacreBLEU's fallback without a raw reference)
  scores.json    {"bleu": ..., "sacrebleu": ..., "chrf": ..., "ter": ..., "reference": ..., ...}
                 written last: an earlier scores.json/longtail.json in OUT_DIR is removed first

Arguments after `--` go to fairseq-generate unchanged. `--user-dir` is always this package's
directory, so that checkpoints of labo_fairseq models and criteria load.
"""
import argparse
import importlib.util
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from labo_fairseq.evaluation import score
from labo_fairseq.evaluation.databin import inspect_data_bin
from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.subwords import POST_PROCESS_FOR_SUBWORDS, POST_PROCESS_MODES
from labo_fairseq.procs import child_command

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# --subwords takes data preparation's names; --post-process (the older spelling) also fairseq's
SUBWORD_CHOICES = tuple(POST_PROCESS_FOR_SUBWORDS)
POST_PROCESS_CHOICES = SUBWORD_CHOICES + tuple(m for m in POST_PROCESS_MODES if m != "none")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} DATA_BIN CHECKPOINT OUT_DIR [options] [-- EXTRA_FAIRSEQ_GENERATE_ARGS...]")
    parser.add_argument("data_bin", metavar="DATA_BIN", type=Path, help="fairseq data-bin directory")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", type=Path, help="model checkpoint (.pt)")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="where the outputs go")
    parser.add_argument("--subset", default="test", help="split to translate (default: %(default)s)")
    parser.add_argument("--beam", type=int, default=5, help="beam size (default: %(default)s)")
    parser.add_argument("--lenpen", type=float, default=1.0, help="length penalty (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="sentences per batch (default: %(default)s)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU")
    parser.add_argument("--subwords", "--post-process", dest="subwords", choices=POST_PROCESS_CHOICES,
                        metavar="{bpe,spm,none}",
                        help="subword decoding (default: from DATA_BIN/prepare.json, else bpe); "
                             "--post-process and fairseq's names subword_nmt/sentencepiece are accepted too")
    parser.add_argument("--source-lang", help="source language (default: prepare.json / file names)")
    parser.add_argument("--target-lang", help="target language (default: prepare.json / file names)")
    parser.add_argument("--raw-ref", help="untokenised reference for sacreBLEU (default: prepare.json's raw_references)")
    parser.add_argument("--lowercase", action="store_true",
                        help="case-insensitive sacreBLEU (default: prepare.json's \"lowercase\")")
    return parser


def split_extra(argv: Sequence[str]):
    """(own arguments, fairseq-generate arguments): everything after the first `--` is fairseq's."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def sentence_count(data_bin: Path, subset: str, src: str, tgt: str) -> Optional[int]:
    """Sentences in a binarised split, from the header of fairseq's mmap index (None if unreadable):
    9-byte magic, version (u64), dtype code (u8), item count (u64)."""
    index = data_bin / f"{subset}.{src}-{tgt}.{src}.idx"
    try:
        with open(index, "rb") as handle:
            header = handle.read(26)
    except OSError:
        return None
    if len(header) < 26 or header[:9] != b"MMIDIDX\x00\x00":
        return None
    return struct.unpack("<Q", header[18:26])[0]


def _progress(total: Optional[int]):
    from tqdm import tqdm
    # a bar only for a person watching; logs and pipelines get nothing
    return tqdm(total=total, unit="sent", desc="translating", disable=not sys.stderr.isatty(),
                dynamic_ncols=True, leave=False)


def run_generate(command: Sequence[str], out_dir: Path, total: Optional[int]) -> int:
    """Runs fairseq-generate, stdout to generate.out and stderr to generate.log, counting the
    source lines (S-) it prints as progress; returns its exit status."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out_dir / "generate.out", "w", encoding="utf-8") as out, \
            open(out_dir / "generate.log", "w", encoding="utf-8") as log, _progress(total) as bar:
        proc = subprocess.Popen(child_command(command), stdout=subprocess.PIPE, stderr=log, env=env,
                                text=True, encoding="utf-8")
        try:
            for line in proc.stdout:
                out.write(line)
                if line.startswith("S-"):
                    bar.update(1)
        finally:
            proc.stdout.close()
            status = proc.wait()
    return status


def require_fairseq() -> None:
    if importlib.util.find_spec("fairseq_cli") is None:
        raise EvaluationError(f"fairseq is not installed for {sys.executable}; install the patched fairseq "
                              f"0.12.2 with scripts/install_fairseq.sh (see the README)")


def main(argv: Optional[Sequence[str]] = None, prog: str = "labo-evaluate") -> None:
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(own)
    if not args.checkpoint.is_file():
        raise EvaluationError(f"checkpoint {args.checkpoint} does not exist")
    post_process = None if args.subwords is None else POST_PROCESS_FOR_SUBWORDS.get(args.subwords, args.subwords)
    info = inspect_data_bin(args.data_bin, args.subset, post_process, args.source_lang, args.target_lang)
    require_fairseq()
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    # Results of an earlier evaluation must not survive a failed one and look current.
    for stale in ("scores.json", "longtail.json"):
        (out_dir / stale).unlink(missing_ok=True)
    print(f"{prog}: translating {args.data_bin} [{args.subset}, {info.source_lang}-{info.target_lang}, "
          f"post-process {info.post_process}] with {args.checkpoint}", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "fairseq_cli.generate", str(args.data_bin), "--path", str(args.checkpoint),
               "--user-dir", str(PACKAGE_DIR), "--gen-subset", args.subset,
               "--source-lang", info.source_lang, "--target-lang", info.target_lang,
               "--beam", str(args.beam), "--lenpen", str(args.lenpen), "--batch-size", str(args.batch_size),
               "--post-process", info.post_process, *(["--cpu"] if args.cpu else []), *extra]
    total = sentence_count(args.data_bin, args.subset, info.source_lang, info.target_lang)
    if run_generate(command, out_dir, total) != 0:
        log = (out_dir / "generate.log").read_text(encoding="utf-8", errors="replace").splitlines()
        print("\n".join(log[-20:]), file=sys.stderr)
        raise EvaluationError(f"fairseq-generate failed; full log in {out_dir / 'generate.log'}")
    score_args = ["--generate-out", str(out_dir / "generate.out"), "--out-dir", str(out_dir),
                  "--target-lang", info.target_lang, "--data-bin", str(args.data_bin), "--subset", args.subset]
    if args.raw_ref:
        score_args += ["--raw-ref", args.raw_ref]
    if args.lowercase:
        score_args.append("--lowercase")
    for key, value in (("subset", args.subset), ("beam", args.beam), ("lenpen", args.lenpen),
                       ("post_process", info.post_process), ("source_lang", info.source_lang),
                       ("checkpoint", args.checkpoint), ("data_bin", args.data_bin)):
        score_args += ["--meta", f"{key}={value}"]
    score.main(score_args)
