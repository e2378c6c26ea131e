"""Long-tail analysis: hand-computed buckets, word level, agreement with compare-mt, CLI."""
import json
import random
import sys
from pathlib import Path

import matplotlib.image
import pytest

from labo_fairseq.errors import UserError
from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.longtail import (BUCKET_KEYS, DEFAULT_BUCKETS, analyse, analyse_files,
                                              bucket_label, bucket_ranges, count_types, load_longtail)
from tests.evaluation.helpers import assert_one_line_error
from tests.toy import REPO_ROOT, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LONGTAIL = REPO_ROOT / "scripts" / "longtail.py"


def write(path: Path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_default_buckets_are_compare_mt_cutoffs():
    assert DEFAULT_BUCKETS == (1, 2, 3, 4, 5, 10, 100, 1000)
    assert bucket_ranges() == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 10), (10, 100), (100, 1000), (1000, None)]
    assert bucket_ranges([2, 5]) == [(0, 1), (1, 2), (2, 5), (5, None)]   # edge 1 is always there
    assert [bucket_label({"lo": lo, "hi": hi}) for lo, hi in bucket_ranges([1, 2, 5])] == \
        ["unseen", "1", "[2,5)", ">=5"]
    for bad in ([0, 1], [5, 2], [1, 1]):
        with pytest.raises(EvaluationError, match="strictly increasing"):
            bucket_ranges(bad)


def test_hand_computed_buckets_edges_unseen_and_empty_hypothesis():
    train = count_types(["x x x x x", "y y y y", "w w w w w w w w w w", "z v v"])
    # training frequencies: z 1, v 2 (at edge 2), y 4, x 5 (at edge 5), w 10 (at edge 10); u, q unseen
    refs = ["x y z u", "w w v", "x"]
    hyps = ["x x y u", "", "q w"]
    buckets = analyse(train, hyps, refs, [1, 2, 5, 10])
    expected = [
        # lo, hi, types, ref, hyp, ratio, precision, recall, f1
        (0, 1, 2, 1, 2, 2.0, 0.5, 1.0, 2 / 3),        # u matched once; q spurious
        (1, 2, 1, 1, 0, 0.0, 0.0, 0.0, 0.0),          # z never produced
        (2, 5, 2, 2, 1, 0.5, 1.0, 0.5, 2 / 3),        # y matched; v missing (its line is empty)
        (5, 10, 1, 2, 2, 1.0, 0.5, 0.5, 0.5),         # x twice in line 1 where ref has it once: clipped
        (10, None, 1, 2, 1, 0.5, 0.0, 0.0, 0.0),      # w produced in line 3, where the ref has none
    ]
    assert [tuple(b[k] for k in BUCKET_KEYS) for b in buckets] == [pytest.approx(e) for e in expected]


def test_empty_bucket_has_null_ratio_and_zero_scores():
    buckets = analyse({"a": 3}, ["a"], ["a"])
    empty = next(b for b in buckets if (b["lo"], b["hi"]) == (1, 2))
    assert (empty["types"], empty["ref_count"], empty["hyp_count"], empty["ratio"]) == (0, 0, 0, None)
    assert (empty["precision"], empty["recall"], empty["f1"]) == (0.0, 0.0, 0.0)
    json.dumps(buckets, allow_nan=False)  # valid JSON: no NaN anywhere


def test_hypothesis_only_bucket_has_zero_scores_not_nan():
    buckets = analyse({}, ["b"], ["a"], [1])
    unseen = buckets[0]
    assert (unseen["ref_count"], unseen["hyp_count"], unseen["ratio"], unseen["f1"]) == (1, 1, 1.0, 0.0)
    hyp_only = analyse({"b": 1}, ["b"], ["a"], [1])[1]
    assert (hyp_only["ref_count"], hyp_only["hyp_count"], hyp_only["ratio"], hyp_only["precision"]) == (0, 1, None, 0.0)


def test_token_and_word_level_bpe(tmp_path):
    train = write(tmp_path / "train.bpe", ["lo@@ w lo@@ w@@ er new"])
    hyp = write(tmp_path / "hyp", ["lo@@ w"])
    ref = write(tmp_path / "ref", ["lo@@ w@@ er"])
    token = {(b["lo"], b["hi"]): b for b in analyse_files(train, hyp, ref, level="token")["buckets"]}
    assert (token[(1, 2)]["ref_count"], token[(1, 2)]["hyp_count"], token[(1, 2)]["f1"]) == (2, 1, 0.0)  # w@@ er / w
    assert (token[(2, 3)]["ref_count"], token[(2, 3)]["hyp_count"], token[(2, 3)]["f1"]) == (1, 1, 1.0)  # lo@@
    word = analyse_files(train, hyp, ref, level="word")
    assert word["level"] == "word"
    singletons = word["buckets"][1]     # low, lower, new each seen once
    assert (singletons["types"], singletons["ref_count"], singletons["hyp_count"], singletons["f1"]) == (2, 1, 1, 0.0)


def test_word_level_sentencepiece_with_decoded_hypotheses(tmp_path):
    train = write(tmp_path / "train.spm", ["\u2581lo w \u2581new", "\u2581new"])
    hyp = write(tmp_path / "hyp", ["low new"])     # evaluate.sh output is decoded already
    ref = write(tmp_path / "ref", ["low"])
    buckets = analyse_files(train, hyp, ref, [1, 2], level="word", subwords="spm")["buckets"]
    assert [(b["lo"], b["ref_count"], b["hyp_count"], b["f1"]) for b in buckets] == \
        [(0, 0, 0, 0.0), (1, 1, 1, 1.0), (2, 0, 1, 0.0)]


def _zipf_corpus(rng, lines, vocab=400):
    weights = [1 / (rank + 1) for rank in range(vocab)]
    return [" ".join(rng.choices([f"w{i}" for i in range(vocab)], weights, k=rng.randint(1, 15)))
            for _ in range(lines)]


@pytest.mark.parametrize("edges", [DEFAULT_BUCKETS, (1, 2, 5, 10, 100, 1000)])
def test_agrees_with_compare_mt(tmp_path, edges):
    rng = random.Random(7)
    train = write(tmp_path / "train", _zipf_corpus(rng, 400))
    refs = _zipf_corpus(rng, 60, vocab=700)   # some types unseen in training
    hyps = [" ".join(w if rng.random() < 0.6 else f"w{rng.randrange(700)}" for w in ref.split()) or "w0"
            for ref in refs]
    ref, hyp = write(tmp_path / "ref", refs), write(tmp_path / "hyp", hyps)
    proc = run_cli([sys.executable, Path(__file__).parent / "compare_mt_runner.py", train, ref, hyp,
                    ",".join(map(str, edges))])
    compare_mt = json.loads(proc.stdout)
    ours = analyse_files(train, hyp, ref, edges, level="token")["buckets"]
    assert len(compare_mt["bucket_strs"]) == len(ours)
    assert compare_mt["bucket_strs"] == [bucket_label(b).replace("unseen", "<1") for b in ours]
    assert any(b["f1"] > 0 for b in ours[1:4]) and ours[0]["ref_count"] > 0   # rare and unseen buckets are populated
    for theirs, mine in zip(compare_mt["buckets"], ours):
        assert (theirs["ref_count"], theirs["hyp_count"]) == (mine["ref_count"], mine["hyp_count"])
        assert (theirs["precision"], theirs["recall"], theirs["f1"]) == \
            pytest.approx((mine["precision"], mine["recall"], mine["f1"]))


def test_cli_writes_json_and_png(tmp_path):
    train = write(tmp_path / "train", ["a a b c", "a d"])
    hyp = write(tmp_path / "hyp", ["a b", "", "e"])
    ref = write(tmp_path / "ref", ["a c", "d", "e"])
    out_json, out_png = tmp_path / "out" / "longtail.json", tmp_path / "out" / "longtail.png"
    proc = run_cli([sys.executable, LONGTAIL, "--train-ref", train, "--hyp", hyp, "--ref", ref,
                    "--buckets", "1,2,5", "--json", out_json, "--png", out_png])
    assert "unseen" in proc.stdout
    result = json.loads(out_json.read_text())
    assert set(result) == {"level", "buckets"} and result["level"] == "token"   # auto: no markers anywhere
    assert [tuple(b) for b in result["buckets"]] == [BUCKET_KEYS] * 4
    assert [(b["lo"], b["hi"]) for b in result["buckets"]] == [(0, 1), (1, 2), (2, 5), (5, None)]
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    height, width, channels = matplotlib.image.imread(out_png).shape
    assert height > 100 and width > 100 and channels in (3, 4)


def test_cli_line_count_mismatch_is_a_one_line_error(tmp_path):
    train = write(tmp_path / "train", ["a"])
    hyp, ref = write(tmp_path / "hyp", ["a", "b"]), write(tmp_path / "ref", ["a"])
    proc = run_cli([sys.executable, LONGTAIL, "--train-ref", train, "--hyp", hyp, "--ref", ref,
                    "--json", tmp_path / "out.json"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"longtail.py: error: line counts differ: hypothesis file {hyp} has 2 lines, reference file {ref} has 1")
    assert not (tmp_path / "out.json").exists()


def test_bpe_training_text_with_plain_hypotheses_is_refused_at_token_level_and_auto_counts_words(tmp_path):
    # evaluate.sh's hyp.txt/ref.txt are subword-free; the training text is BPE'd
    train = write(tmp_path / "train.bpe", ["the lo@@ w@@ er house", "the lo@@ w house", "a house"])
    hyp = write(tmp_path / "hyp", ["the lower house"])
    ref = write(tmp_path / "ref", ["the low house"])
    with pytest.raises(EvaluationError, match=r"--train-ref .*train\.bpe has bpe subword markers but --hyp .* has none"
                                              r".*pass --level word"):
        analyse_files(train, hyp, ref, level="token")
    auto = analyse_files(train, hyp, ref, level="auto")
    assert auto["level"] == "word" and "bpe subword markers" in auto["note"]
    assert auto["buckets"] == analyse_files(train, hyp, ref, level="word")["buckets"]
    # with words on both sides nothing is unseen: lower (1), low (1), the (2), house (3)
    by_lo = {b["lo"]: b for b in auto["buckets"]}
    assert (by_lo[0]["ref_count"], by_lo[0]["hyp_count"]) == (0, 0)
    assert (by_lo[1]["ref_count"], by_lo[1]["hyp_count"]) == (1, 1)
    with pytest.raises(EvaluationError, match="--subwords spm does not match the bpe markers"):
        analyse_files(train, hyp, ref, level="word", subwords="spm")


def test_cli_default_level_is_auto_and_says_so(tmp_path):
    train = write(tmp_path / "train.bpe", ["lo@@ w new", "new"])
    hyp, ref = write(tmp_path / "hyp", ["low new"]), write(tmp_path / "ref", ["low"])
    proc = run_cli([sys.executable, LONGTAIL, "--train-ref", train, "--hyp", hyp, "--ref", ref,
                    "--json", tmp_path / "lt.json", "--png", tmp_path / "lt.png"])
    assert "counting words" in proc.stderr and proc.stdout.startswith("word level")
    assert json.loads((tmp_path / "lt.json").read_text())["level"] == "word"
    from labo_fairseq.evaluation.plots import figure_info
    assert all("word" in panel["title"] for panel in figure_info(tmp_path / "lt.png"))
    refused = run_cli([sys.executable, LONGTAIL, "--train-ref", train, "--hyp", hyp, "--ref", ref, "--level", "token",
                       "--json", tmp_path / "token.json"], check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "pass --level word" in refused.stderr
    assert not (tmp_path / "token.json").exists()


def _longtail(tmp_path, *extra, **files):
    paths = {"train": write(tmp_path / "train", ["a a b", "c"]), "hyp": write(tmp_path / "hyp", ["a b"]),
             "ref": write(tmp_path / "ref", ["a c"])}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.bytes"
        paths[name].write_bytes(data)
    return run_cli([sys.executable, LONGTAIL, "--train-ref", paths["train"], "--hyp", paths["hyp"],
                    "--ref", paths["ref"], *extra], check=False), paths


def test_cli_non_utf8_input_names_file_and_line(tmp_path):
    out = tmp_path / "lt.json"
    proc, paths = _longtail(tmp_path, "--json", out, hyp=b"a b\nc \xff d\n", ref=b"a b\nc d\n")
    assert_one_line_error(proc, "longtail.py", f"hypothesis file {paths['hyp']}: line 2 is not valid UTF-8")
    proc, paths = _longtail(tmp_path, "--json", out, train=b"a\n\xe9t\xe9\n")
    assert_one_line_error(proc, "longtail.py", f"training target text {paths['train']}: line 2 is not valid UTF-8")
    assert not out.exists()


def test_cli_output_that_is_a_directory_is_refused_at_parsing(tmp_path):
    (tmp_path / "plots").mkdir()
    proc, _ = _longtail(tmp_path, "--json", tmp_path)
    assert_one_line_error(proc, "longtail.py", f"argument --json: {tmp_path} is a directory")
    proc, _ = _longtail(tmp_path, "--json", tmp_path / "lt.json", "--png", tmp_path / "plots")
    assert_one_line_error(proc, "longtail.py", f"argument --png: {tmp_path / 'plots'} is a directory")
    proc, paths = _longtail(tmp_path, "--json", tmp_path / "hyp" / "lt.json")
    assert_one_line_error(proc, "longtail.py", f"argument --json: cannot write {tmp_path / 'hyp' / 'lt.json'}: "
                                               f"{paths['hyp']} is a file")
    assert not (tmp_path / "lt.json").exists()


@pytest.mark.parametrize("value, message", [
    ("0,2", "bucket edges must be strictly increasing integers >= 1, got [0, 2] (from '0,2')"),
    ("5,2", "bucket edges must be strictly increasing integers >= 1, got [5, 2]"),
    ("-3", "bucket edges must be strictly increasing integers >= 1, got [-3] (from '-3')"),
    ("1,x", "expected comma-separated integers, got '1,x'"),
])
def test_cli_bad_buckets_are_refused_at_parsing(tmp_path, value, message):
    proc, _ = _longtail(tmp_path, "--json", tmp_path / "lt.json", f"--buckets={value}")
    assert_one_line_error(proc, "longtail.py", f"argument --buckets: {message}")


def test_cli_writes_only_its_outputs(tmp_path):
    out = tmp_path / "out"
    proc, _ = _longtail(tmp_path, "--json", out / "lt.json", "--png", out / "lt.png")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["lt.json", "lt.png"]   # nothing written aside is left
    assert load_longtail(out / "lt.json")["level"] == "token"


@pytest.mark.parametrize("change, message", [
    ({"f1": "abc"}, 'bucket 1 "f1" must be a number, got \'abc\''),
    ({"ref_count": -1}, 'bucket 1 "ref_count" must be a non-negative integer, got -1'),
    ({"hi": "x"}, 'bucket 1 "hi" must be a non-negative integer or null'),
    ({"ratio": True}, 'bucket 1 "ratio" must be a number, got True'),
])
def test_load_longtail_refuses_wrong_types(tmp_path, change, message):
    result = analyse_files(write(tmp_path / "t", ["a b"]), write(tmp_path / "h", ["a"]), write(tmp_path / "r", ["b"]))
    result["buckets"][1].update(change)
    path = tmp_path / "longtail.json"
    path.write_text(json.dumps(result))
    with pytest.raises(EvaluationError) as raised:
        load_longtail(path)
    assert str(raised.value).startswith(f"long-tail file {path}: {message}")


def test_load_longtail_refuses_broken_files(tmp_path):
    path = tmp_path / "longtail.json"
    for data, message in ((b"{", "is not valid JSON"), (b"\xff{}", "is not valid JSON"),
                          (b"[]", "must hold a JSON object"), (b'{"buckets": []}', "no \"buckets\" list")):
        path.write_bytes(data)
        with pytest.raises(UserError, match=message) as raised:
            load_longtail(path)
        assert str(raised.value).startswith(f"long-tail file {path}")


def test_a_failed_plot_leaves_the_previous_png(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from labo_fairseq.evaluation.plots import plot_longtail

    result = analyse_files(write(tmp_path / "t", ["a b"]), write(tmp_path / "h", ["a"]), write(tmp_path / "r", ["b"]))
    out = tmp_path / "plots" / "lt.png"
    plot_longtail({"run": [result]}, out)
    before = out.read_bytes()

    def half_written(self, fname, **kwargs):
        Path(fname).write_bytes(before[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(OSError):
        plot_longtail({"other run": [result]}, out)
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["lt.png"]
