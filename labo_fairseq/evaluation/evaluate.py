"""Translate a data-bin split with fairseq-generate and score it: tokenized BLEU as fairseq prints
it; sacreBLEU, chrF and TER of the Moses-detokenized output against the raw reference.

`labo-evaluate` (and scripts/evaluate.sh, which runs this) writes to OUT_DIR:
  generate.out   raw fairseq-generate stdout (its last line is fairseq's BLEU4); there only when
                 fairseq-generate succeeded
  generate.log   fairseq-generate stderr (logging); on failure, its exception line is reported
  hyp.txt ref.txt src.txt        subword-free text in sentence-id order (what fairseq scored)
  hyp.detok.txt  Moses-detokenized hypotheses (what sacreBLEU scored)
  ref.raw.txt    the raw reference sacreBLEU scored against (from DATA_BIN/prepare.json or --raw-ref)
  ref.detok.txt  the detokenized binarised reference (sacreBLEU's fallback without a raw reference)
  scores.json    {"bleu": ..., "sacrebleu": ..., "chrf": ..., "ter": ..., "reference": ..., ...}
                 written last
Every file is written aside (.NAME.part-PID) and renamed. All results of an earlier evaluation
in OUT_DIR (these files and longtail.json) are removed before translating, so a failed evaluation
leaves none that look current; so are the temporary files of an evaluation that was killed (their
process no longer runs). Before fairseq-generate starts, CHECKPOINT is checked to be a torch.save
file and the raw reference to be a readable text file with a line per sentence of the split;
--beam and --batch-size must be at least 1. A checkpoint that torch's weights-only loader refuses,
or whose weights do not fit the data-bin (another vocabulary), is reported in one line.

With --ivon-samples K (a checkpoint trained with --optimizer ivon), K models drawn from the
posterior stored in the checkpoint translate together, fairseq's ensemble averaging their token
probabilities (IVON's posterior predictive); they live in OUT_DIR/.ivon-samples-PID-* while
fairseq-generate runs. scores.json records ivon_samples and ivon_seed.

Arguments after `--` go to fairseq-generate unchanged. `--user-dir` is always this package's
directory, so that checkpoints of labo_fairseq models and criteria load.
"""
import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Optional, Sequence

from labo_fairseq.arguments import finite_float, int_at_least, output_dir, positive_int
from labo_fairseq.evaluation import score
from labo_fairseq.evaluation.databin import inspect_data_bin, reference_for, sentence_count
from labo_fairseq.checkpoints import checkpoint_load_error
from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.leftovers import remove_stale
from labo_fairseq.evaluation.subwords import POST_PROCESS_FOR_SUBWORDS, POST_PROCESS_MODES
from labo_fairseq.procs import child_command
from labo_fairseq.textfiles import read_lines

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# --subwords takes data preparation's names; --post-process (the older spelling) also fairseq's
SUBWORD_CHOICES = tuple(POST_PROCESS_FOR_SUBWORDS)
POST_PROCESS_CHOICES = SUBWORD_CHOICES + tuple(m for m in POST_PROCESS_MODES if m != "none")
GENERATE_OUT = "generate.out"
GENERATE_LOG = "generate.log"
IVON_SAMPLES_PREFIX = ".ivon-samples-"
# what an earlier evaluation left in OUT_DIR; removed before translating, so that a failed
# evaluation never leaves results that look current
RESULT_FILES = (*score.TEXT_FILES, score.SCORES_FILE, "longtail.json", GENERATE_OUT)
# the temporary files of an evaluation: .NAME.part-PID of each result, .ivon-samples-PID-* (the
# posterior samples); removed by the next evaluation when process PID no longer runs
TEMPORARY_PATTERN = rf"\.(?:(?:{'|'.join(map(re.escape, RESULT_FILES))})\.part|ivon-samples)-(?P<pid>\d+)(?:-.*)?"
# torch.save's legacy (non-zip) format starts with the pickled magic number
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} DATA_BIN CHECKPOINT OUT_DIR [options] [-- EXTRA_FAIRSEQ_GENERATE_ARGS...]")
    parser.add_argument("data_bin", metavar="DATA_BIN", type=Path, help="fairseq data-bin directory")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", type=Path, help="model checkpoint (.pt)")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=output_dir, help="where the outputs go")
    parser.add_argument("--subset", default="test", help="split to translate (default: %(default)s)")
    parser.add_argument("--beam", type=positive_int, default=5, help="beam size (default: %(default)s)")
    parser.add_argument("--lenpen", type=finite_float, default=1.0,
                        help="length penalty: hypothesis scores are divided by length**LENPEN, so 0 compares "
                             "unnormalised scores (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=128,
                        help="sentences per batch (default: %(default)s)")
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
    parser.add_argument("--ivon-samples", type=int_at_least(0), default=0, metavar="K",
                        help="for a checkpoint trained with --optimizer ivon: translate with the average of "
                             "K models drawn from its posterior (fairseq's ensemble averages their token "
                             "probabilities) instead of the mean weights (default: 0, the mean)")
    parser.add_argument("--ivon-seed", type=int, default=1, help="seed of the posterior samples (default: %(default)s)")
    return parser


@contextlib.contextmanager
def model_paths(args, out_dir: Path):
    """fairseq-generate's --path: the checkpoint, or K posterior samples of it (--ivon-samples),
    written into OUT_DIR/.ivon-samples-PID-* for the time of the translation."""
    if not args.ivon_samples:
        yield str(args.checkpoint)
        return
    from labo_fairseq.optim.ivon_posterior import sample_checkpoints

    with tempfile.TemporaryDirectory(prefix=f"{IVON_SAMPLES_PREFIX}{os.getpid()}-", dir=out_dir) as folder:
        paths = sample_checkpoints(args.checkpoint, args.data_bin, args.ivon_samples, args.ivon_seed, folder)
        yield ":".join(map(str, paths))


def split_extra(argv: Sequence[str]):
    """(own arguments, fairseq-generate arguments): everything after the first `--` is fairseq's."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def check_checkpoint(path: Path) -> None:
    """A cheap look at CHECKPOINT before fairseq-generate loads it: a file in one of torch.save's
    formats (a zip archive with a pickle in it, read from its central directory at the end, so a
    truncated copy is caught too; or the legacy pickle format)."""
    if not path.exists():
        raise EvaluationError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise EvaluationError(f"checkpoint {path} is a directory; give the checkpoint file in it "
                              f"(e.g. {path / 'checkpoint_best.pt'})")
    with open(path, "rb") as handle:
        head = handle.read(len(LEGACY_TORCH_MAGIC))
    if not head:
        raise EvaluationError(f"checkpoint {path} is empty")
    if head == LEGACY_TORCH_MAGIC:
        return
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        raise EvaluationError(f"checkpoint {path} is not a PyTorch checkpoint, or is truncated "
                              f"(not a file torch.save writes: {error})") from None
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise EvaluationError(f"checkpoint {path} is a zip archive but not a PyTorch checkpoint (no data.pkl in it)")


def check_raw_reference(args, total: Optional[int]) -> None:
    """The raw reference sacreBLEU will score against (--raw-ref, else the one prepare.json names)
    is read before translating: a missing, unreadable or empty file, or one with another number of
    lines than the split has sentences, is refused before fairseq-generate runs."""
    path = args.raw_ref or reference_for(args.data_bin, args.subset).raw_path
    if path is None:
        return
    lines = read_lines(path, "raw reference", allow_empty=False)
    if total is not None and len(lines) != total:
        raise EvaluationError(f"raw reference {path} has {len(lines)} lines but split '{args.subset}' of data-bin "
                              f"{args.data_bin} has {total} sentences; it is not this split's")


def failure_summary(log: Path, limit: int = 300) -> str:
    """The line of a log that says why the program failed: the exception line of its last
    traceback, else its last non-empty line; shortened to `limit` characters."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no log"
    found = None
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        found = next((line for line in lines[starts[-1] + 1:] if line.strip() and not line[0].isspace()), None)
    if found is None:
        found = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    found = found.strip()
    return found if len(found) <= limit else found[:limit - 3] + "..."


PROGRESS_LINE_SECONDS = 30.0  # without a terminal (a log, the pipeline): a line this often


class ProgressLines:
    """Translation progress where no terminal shows a bar (a log file, labo-experiment's console):
    "translating: N/TOTAL sentences" on stderr every `interval` seconds."""

    def __init__(self, total: Optional[int], interval: Optional[float] = None, stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.interval = PROGRESS_LINE_SECONDS if interval is None else interval
        self.count = 0
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            of = "" if self.total is None else f"/{self.total}"
            print(f"translating: {self.count}{of} sentences", file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _progress(total: Optional[int]):
    if not sys.stderr.isatty():
        return ProgressLines(total)
    from tqdm import tqdm
    return tqdm(total=total, unit="sent", desc="translating", dynamic_ncols=True, leave=False)


def run_generate(command: Sequence[str], out_dir: Path, total: Optional[int]) -> int:
    """Runs fairseq-generate, stdout to generate.out and stderr to generate.log, counting the
    source lines (S-) it prints as progress; returns its exit status. generate.out is written
    aside and appears only when fairseq-generate succeeded."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    final = out_dir / GENERATE_OUT
    part = out_dir / f".{GENERATE_OUT}.part-{os.getpid()}"
    try:
        with open(part, "w", encoding="utf-8") as out, \
                open(out_dir / GENERATE_LOG, "w", encoding="utf-8") as log, _progress(total) as bar:
            proc = subprocess.Popen(child_command(command), stdout=subprocess.PIPE, stderr=log, env=env,
                                    text=True, encoding="utf-8", errors="replace")
            try:
                for line in proc.stdout:
                    out.write(line)
                    if line.startswith("S-"):
                        bar.update(1)
            except BaseException:   # Ctrl-C, SIGTERM, a full disk: fairseq-generate stops too
                proc.terminate()
                raise
            finally:
                proc.stdout.close()
                status = proc.wait()
        if status == 0:
            part.replace(final)
    finally:
        part.unlink(missing_ok=True)
    return status


def require_fairseq() -> None:
    from labo_fairseq.install import INSTALL_COMMAND, fairseq_problem

    problem = fairseq_problem()
    if problem:
        raise EvaluationError(f"{problem}: run {INSTALL_COMMAND}")


def main(argv: Optional[Sequence[str]] = None, prog: str = "labo-evaluate") -> None:
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(own)
    check_checkpoint(args.checkpoint)
    post_process = None if args.subwords is None else POST_PROCESS_FOR_SUBWORDS.get(args.subwords, args.subwords)
    info = inspect_data_bin(args.data_bin, args.subset, post_process, args.source_lang, args.target_lang)
    require_fairseq()
    total = sentence_count(args.data_bin, args.subset, info.source_lang, info.target_lang)
    check_raw_reference(args, total)
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir, TEMPORARY_PATTERN, prog)
    keep = None if args.raw_ref is None else Path(args.raw_ref).resolve()
    for stale in RESULT_FILES:
        if (out_dir / stale).resolve() != keep:
            (out_dir / stale).unlink(missing_ok=True)
    print(f"{prog}: translating {args.data_bin} [{args.subset}, {info.source_lang}-{info.target_lang}, "
          f"post-process {info.post_process}] with {args.checkpoint}", file=sys.stderr, flush=True)
    with model_paths(args, out_dir) as paths:
        command = [sys.executable, "-m", "fairseq_cli.generate", str(args.data_bin), "--path", paths,
                   "--user-dir", str(PACKAGE_DIR), "--gen-subset", args.subset,
                   "--source-lang", info.source_lang, "--target-lang", info.target_lang,
                   "--beam", str(args.beam), "--lenpen", str(args.lenpen), "--batch-size", str(args.batch_size),
                   "--post-process", info.post_process, *(["--cpu"] if args.cpu else []), *extra]
        status = run_generate(command, out_dir, total)
    if status != 0:
        log = out_dir / GENERATE_LOG
        known = checkpoint_load_error(args.checkpoint, args.data_bin, log.read_text(encoding="utf-8", errors="replace"))
        if known is not None:   # a refused pickle, another vocabulary: one line says which
            raise EvaluationError(f"{known} (full log: {log})")
        raise EvaluationError(f"fairseq-generate failed (exit status {status}): {failure_summary(log)} "
                              f"(full log: {log})")
    metadata = {"subset": args.subset, "beam": args.beam, "lenpen": args.lenpen, "post_process": info.post_process,
                "source_lang": info.source_lang, "checkpoint": str(args.checkpoint), "data_bin": str(args.data_bin)}
    if args.ivon_samples:
        metadata.update(ivon_samples=args.ivon_samples, ivon_seed=args.ivon_seed)
    score.score_generate_output(out_dir / GENERATE_OUT, out_dir, info.target_lang, info.source_lang,
                                str(args.data_bin), args.subset, args.raw_ref, args.lowercase, metadata)
