"""scripts/evaluate.sh end to end on the tiny trained model: the scores it records are the ones
fairseq-generate, fairseq-score and the sacrebleu CLI print for the same text."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from labo_fairseq.evaluation.evaluate import RESULT_FILES
from tests.evaluation.helpers import assert_one_line_error, dead_pid
from tests.toy import REPO_ROOT, run_cli

# one xdist worker runs the modules that share the toy checkpoint and evaluation (session
# fixtures), so that they are built once (make test --dist loadgroup)
pytestmark = pytest.mark.xdist_group("toy-checkpoint")

EVALUATE = REPO_ROOT / "scripts" / "evaluate.sh"
PROG = "scripts/evaluate.sh"


def read(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_bleu_equals_fairseq_generate_line(toy_evaluation):
    scores = json.loads((toy_evaluation / "scores.json").read_text())
    generate_lines = [l for l in read(toy_evaluation / "generate.out") if l.startswith("Generate test with beam=5: ")]
    assert len(generate_lines) == 1
    printed = generate_lines[0].split(": ", 1)[1]
    assert printed.startswith("BLEU4 = ")
    assert scores["bleu"]["string"] == printed == scores["generate_bleu"]
    assert f"{scores['bleu']['score']:.2f}" == re.match(r"BLEU4 = ([\d.]+),", printed).group(1)
    # fairseq-score on the written files reproduces it too (files == what fairseq scored)
    proc = run_cli(["fairseq-score", "--sys", toy_evaluation / "hyp.txt", "--ref", toy_evaluation / "ref.txt"])
    assert proc.stdout.strip().splitlines()[-1] == printed


def test_sacrebleu_and_chrf_equal_sacrebleu_cli(toy_evaluation):
    scores = json.loads((toy_evaluation / "scores.json").read_text())
    proc = run_cli(["sacrebleu", toy_evaluation / "ref.detok.txt", "-i", toy_evaluation / "hyp.detok.txt",
                    "-m", "bleu", "chrf", "-w", "4"])
    bleu, chrf = json.loads(proc.stdout)
    assert (bleu["name"], chrf["name"]) == ("BLEU", "chrF2")
    assert round(scores["sacrebleu"]["score"], 4) == bleu["score"]
    assert round(scores["chrf"]["score"], 4) == chrf["score"]
    assert scores["chrf"]["score"] > 0  # the toy model gets some characters right
    assert scores["sacrebleu"]["signature"] == bleu["signature"]
    assert scores["chrf"]["signature"] == chrf["signature"]
    # the toy data-bin has no prepare.json: no raw reference, and scores.json says so
    assert scores["reference"]["kind"] == "detokenized" and scores["reference"]["comparable"] is False


def test_files_follow_sentence_ids_and_metadata(toy_evaluation, toy_data_bin):
    text_dir = toy_data_bin.parent / "text"
    # generate emits batches sorted by length; the files must be back in corpus order
    assert read(toy_evaluation / "ref.txt") == read(text_dir / "test.tgt")
    assert read(toy_evaluation / "src.txt") == read(text_dir / "test.src")
    assert len(read(toy_evaluation / "hyp.txt")) == 40
    scores = json.loads((toy_evaluation / "scores.json").read_text())
    assert scores["num_sentences"] == 40
    assert (scores["subset"], scores["beam"], scores["lenpen"]) == ("test", 5, 1.0)
    assert (scores["post_process"], scores["target_lang"], scores["source_lang"]) == ("subword_nmt", "tgt", "src")
    assert (toy_evaluation / "generate.log").is_file()


def test_extra_fairseq_args_after_double_dash(toy_data_bin, toy_ls_checkpoint, tmp_path):
    out_dir = tmp_path / "nbest"
    run_cli(["bash", EVALUATE, toy_data_bin, toy_ls_checkpoint, out_dir, "--cpu", "--beam", "2",
             "--", "--nbest", "2"])
    generate_out = (out_dir / "generate.out").read_text()
    assert generate_out.count("\nD-0\t") + generate_out.startswith("D-0\t") == 2
    assert len(read(out_dir / "hyp.txt")) == 40  # best hypothesis only
    scores = json.loads((out_dir / "scores.json").read_text())
    assert scores["bleu"]["string"] == scores["generate_bleu"]


def _assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    error_lines = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert len(error_lines) == 1, proc.stderr
    for needle in needles:
        assert str(needle) in error_lines[0]


def test_missing_checkpoint_is_an_error(toy_data_bin, tmp_path):
    missing = tmp_path / "no-such-checkpoint.pt"
    proc = run_cli(["bash", EVALUATE, toy_data_bin, missing, tmp_path / "out"], check=False)
    _assert_one_line_error(proc, missing)


def test_missing_split_is_an_error(toy_data_bin, toy_ls_checkpoint, tmp_path):
    proc = run_cli(["bash", EVALUATE, toy_data_bin, toy_ls_checkpoint, tmp_path / "out", "--subset", "test7"],
                   check=False)
    _assert_one_line_error(proc, toy_data_bin, "test7")


@pytest.mark.parametrize("flag, value", [("--beam", "0"), ("--beam", "-2"), ("--batch-size", "0")])
def test_bad_numbers_are_usage_errors(toy_data_bin, toy_ls_checkpoint, tmp_path, flag, value):
    proc = run_cli(["bash", EVALUATE, toy_data_bin, toy_ls_checkpoint, tmp_path / "out", flag, value], check=False)
    assert_one_line_error(proc, PROG, f"argument {flag}: must be at least 1, got {value}")
    assert not (tmp_path / "out").exists()   # refused before anything ran


def test_checkpoint_directory_is_named_as_such(toy_data_bin, toy_ls_checkpoint, tmp_path):
    proc = run_cli(["bash", EVALUATE, toy_data_bin, toy_ls_checkpoint.parent, tmp_path / "out"], check=False)
    assert_one_line_error(proc, PROG, f"checkpoint {toy_ls_checkpoint.parent} is a directory")


def test_random_bytes_checkpoint_is_one_line(toy_data_bin, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes((i * 7919) % 251 for i in range(5000)))
    proc = run_cli(["bash", EVALUATE, toy_data_bin, garbage, tmp_path / "out", "--cpu"], check=False)
    line = assert_one_line_error(proc, PROG, garbage, "not a PyTorch checkpoint")
    assert proc.stderr.strip().splitlines() == [line]   # checked before fairseq-generate starts


def test_failed_generate_is_one_line_and_leaves_no_earlier_results(toy_evaluation, toy_data_bin, tmp_path):
    # A real torch file, but no fairseq checkpoint: fairseq-generate fails when loading it.
    not_fairseq = tmp_path / "not-fairseq.pt"
    torch.save({"weights": torch.zeros(3)}, not_fairseq)
    out = tmp_path / "out"
    shutil.copytree(toy_evaluation, out)   # an earlier, successful evaluation
    (out / "longtail.json").write_text("{}")
    assert all((out / name).is_file() for name in RESULT_FILES if name != "ref.raw.txt")
    proc = run_cli(["bash", EVALUATE, toy_data_bin, not_fairseq, out, "--cpu"], check=False)
    assert_one_line_error(proc, PROG, "fairseq-generate failed (exit status 1): KeyError:",
                          f"full log: {out / 'generate.log'}")
    assert len(proc.stderr.strip().splitlines()) == 2   # "translating ..." and the error
    assert sorted(p.name for p in out.iterdir()) == ["generate.log"]
    assert "Traceback" in (out / "generate.log").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the child process in /proc")
def test_sigterm_stops_fairseq_generate_and_leaves_no_output(toy_data_bin, toy_ls_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "labo_fairseq.cli", "evaluate", toy_data_bin, toy_ls_checkpoint,
                             out, "--cpu", "--batch-size", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    children_file = f"/proc/{proc.pid}/task/{proc.pid}/children"
    children = []
    deadline = time.monotonic() + 60
    while not children and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if os.path.exists(children_file):
            children = open(children_file).read().split()
    assert children, "fairseq-generate did not start"
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("labo-evaluate: interrupted")
    assert not any(os.path.exists(f"/proc/{child}") for child in children)   # fairseq-generate stopped too
    assert sorted(p.name for p in out.iterdir()) == ["generate.log"]


def test_help():
    proc = run_cli(["bash", EVALUATE, "--help"])
    assert "usage: scripts/evaluate.sh DATA_BIN CHECKPOINT OUT_DIR" in proc.stdout


def _cli_scores(reference, hypothesis, *flags):
    proc = run_cli(["sacrebleu", reference, "-i", hypothesis, "-m", "bleu", "chrf", "ter", "-w", "4", *flags])
    return {entry["name"]: entry for entry in json.loads(proc.stdout)}


def test_sacrebleu_on_the_raw_reference_equals_the_cli(toy_raw_evaluation):
    data_bin, out = toy_raw_evaluation
    scores = json.loads((out / "scores.json").read_text())
    assert scores["reference"] == {"kind": "raw", "path": str(data_bin / "test.raw.tgt"), "file": "ref.raw.txt",
                                   "lowercase": True, "comparable": True}
    assert read(out / "ref.raw.txt") == read(data_bin / "test.raw.tgt")  # sentence-id order = file order
    # What a user types by hand on the published reference file (the data was lowercased: -lc)
    cli = _cli_scores(data_bin / "test.raw.tgt", out / "hyp.detok.txt", "-lc", "--chrf-lowercase")
    assert round(scores["sacrebleu"]["score"], 4) == cli["BLEU"]["score"]
    assert round(scores["chrf"]["score"], 4) == cli["chrF2"]["score"]
    assert round(scores["ter"]["score"], 4) == cli["TER"]["score"]
    for key, name in (("sacrebleu", "BLEU"), ("chrf", "chrF2"), ("ter", "TER")):
        assert scores[key]["signature"] == cli[name]["signature"] and "case:lc" in scores[key]["signature"]
    assert scores["sacrebleu_command"] == "sacrebleu ref.raw.txt -i hyp.detok.txt -m bleu chrf ter -lc --chrf-lowercase"
    # the reference is really the raw one: case-sensitive chrF against it is lower, and the
    # detokenized binarised reference gives another number
    cased = _cli_scores(data_bin / "test.raw.tgt", out / "hyp.detok.txt")
    assert cased["chrF2"]["score"] < scores["chrf"]["score"]
    detok = _cli_scores(out / "ref.detok.txt", out / "hyp.detok.txt", "-lc", "--chrf-lowercase")
    assert detok["chrF2"]["score"] != scores["chrf"]["score"]
    assert scores["sacrebleu"]["length_ratio"] == pytest.approx(scores["sacrebleu"]["sys_len"] /
                                                                scores["sacrebleu"]["ref_len"])


def test_raw_reference_of_another_split_is_refused(toy_raw_evaluation, toy_ls_checkpoint, tmp_path):
    data_bin, _ = toy_raw_evaluation
    short = tmp_path / "short.txt"
    short.write_text("Only one line.\n")
    proc = run_cli(["bash", EVALUATE, data_bin, toy_ls_checkpoint, tmp_path / "out", "--cpu", "--raw-ref", short],
                   check=False)
    _assert_one_line_error(proc, short, "1 lines", "40 sentences")
    assert not (tmp_path / "out" / "scores.json").exists()


def test_temporary_files_of_a_killed_evaluation_are_removed_a_running_ones_kept(toy_data_bin, toy_ls_checkpoint,
                                                                                 tmp_path):
    # before: a SIGKILLed evaluation's .generate.out.part-PID stayed in OUT_DIR through every re-run
    out = tmp_path / "out"
    out.mkdir()
    dead, live = dead_pid(), os.getpid()
    stale = [out / f".generate.out.part-{dead}", out / f".scores.json.part-{dead}",
             out / f".ivon-samples-{dead}-k3"]
    kept = [out / f".generate.out.part-{live}", out / ".ivon-samples-x7", out / "notes.txt"]
    for path in stale + kept:
        if "ivon" in path.name:
            path.mkdir()
            (path / "ivon-sample1.pt").write_bytes(b"partial")
        else:
            path.write_text("partial\n")
    proc = run_cli(["bash", EVALUATE, toy_data_bin, toy_ls_checkpoint, out, "--cpu", "--batch-size", "16"])
    removed = [line for line in proc.stderr.splitlines() if "no longer runs" in line]
    assert removed == [f"{PROG}: removed {path}, left by process {dead}, which no longer runs"
                       for path in sorted(stale)]
    assert not any(path.exists() for path in stale) and all(path.exists() for path in kept)
    assert json.loads((out / "scores.json").read_text())["num_sentences"] == 40


@pytest.fixture(scope="module")
def pickle_payload_checkpoint(tmp_path_factory):
    """A torch file whose pickle calls os.system when unpickled unsafely (it would create `marker`)."""
    root = tmp_path_factory.mktemp("payload")
    marker = root / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"model": Payload()}, root / "payload.pt")
    return root / "payload.pt", marker


@pytest.mark.parametrize("flags", [[], ["--ivon-samples", "2"]])
def test_pickle_payload_checkpoint_is_refused_in_one_line(toy_data_bin, pickle_payload_checkpoint, tmp_path, flags):
    # before: fairseq-generate's message cut before the global, advising weights_only=False; with
    # --ivon-samples a traceback (UnpicklingError)
    checkpoint, marker = pickle_payload_checkpoint
    proc = run_cli(["bash", EVALUATE, toy_data_bin, checkpoint, tmp_path / "out", "--cpu", *flags], check=False)
    line = assert_one_line_error(proc, PROG, f"checkpoint {checkpoint} is refused",
                                 f"refers to {os.system.__module__}.system")
    assert "weights_only" not in line
    assert not marker.exists()   # never run


def test_checkpoint_of_another_vocabulary_names_both_sizes(toy_data_bin, toy_ls_checkpoint, tmp_path):
    # before: "RuntimeError: Error(s) in loading state_dict for TransformerModel:" and nothing else
    data_bin = tmp_path / "data-bin"
    shutil.copytree(toy_data_bin, data_bin)
    for name in ("dict.src.txt", "dict.tgt.txt"):
        with open(data_bin / name, "a") as handle:
            handle.write("".join(f"extra{i} 1\n" for i in range(24)))
    trained = torch.load(toy_ls_checkpoint, weights_only=False)["model"]["encoder.embed_tokens.weight"].shape
    proc = run_cli(["bash", EVALUATE, data_bin, toy_ls_checkpoint, tmp_path / "out", "--cpu"], check=False)
    assert_one_line_error(proc, PROG, toy_ls_checkpoint, "encoder.embed_tokens.weight",
                          f"embedding size {trained[0] + 24} in the data-bin's source dictionary, "
                          f"{trained[0]} in the checkpoint")


@pytest.mark.parametrize("make, message", [
    (lambda path: path.write_text("One line.\n"), "has 1 lines but split 'test' of data-bin"),
    (lambda path: None, "does not exist"),
    (lambda path: path.mkdir(), "is a directory"),
    (lambda path: path.write_bytes(b"ok\n\xff\n"), "line 2 is not valid UTF-8"),
])
def test_raw_reference_is_checked_before_translating(toy_data_bin, toy_ls_checkpoint, tmp_path, make, message):
    # before: these errors came after fairseq-generate had translated the whole split
    raw = tmp_path / "raw.txt"
    make(raw)
    proc = run_cli(["bash", EVALUATE, toy_data_bin, toy_ls_checkpoint, tmp_path / "out", "--cpu", "--raw-ref", raw],
                   check=False)
    line = assert_one_line_error(proc, PROG, f"raw reference {raw}", message)
    assert proc.stderr.strip().splitlines() == [line]   # no "translating ..." line
    assert not (tmp_path / "out").exists()


def test_data_bin_that_is_a_file_is_named_as_such(toy_data_bin, toy_ls_checkpoint, tmp_path):
    # before: "data-bin directory .../dict.src.txt does not exist"
    proc = run_cli(["bash", EVALUATE, toy_data_bin / "dict.src.txt", toy_ls_checkpoint, tmp_path / "out"], check=False)
    assert_one_line_error(proc, PROG, f"data-bin {toy_data_bin / 'dict.src.txt'} is a file, not a directory")
