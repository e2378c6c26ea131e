"""labo-experiment's recipe checks and run state: what is refused before training, and what a
re-run does when the data-bin, the checkpoint or a state file changed since a run finished."""
import fcntl
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from labo_fairseq import experiment
from labo_fairseq.experiment import Interrupted, OutputLock, RecipeError, load_recipe
from labo_fairseq.functional import TAU_MIN
from tests.toy import REPO_ROOT, TINY_TRANSFORMER_ARGS, preprocess, run_cli, write_toy_corpus

# one xdist worker builds this module's finished experiment once (make test --dist loadgroup)
pytestmark = pytest.mark.xdist_group("finished-experiment")

SCRIPT = REPO_ROOT / "scripts" / "run_experiment.py"
RUN = "ls-a0.1-seed1"


def recipe_text(data_bin="data-bin", train_target="text/train.tgt", seeds="[1]", subsets='["test"]',
                evaluate="", methods='[[methods]]\nkind = "ls"\n'):
    args = [*TINY_TRANSFORMER_ARGS, "--cpu", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500",
            "--max-update", "4", "--log-format", "simple", "--no-progress-bar"]
    return (f'name = "tiny"\nseeds = {seeds}\n[data]\ndata_bin = "{data_bin}"\ntrain_target = "{train_target}"\n'
            f'subsets = {subsets}\n[train]\nargs = {json.dumps(args)}\n'
            f'[evaluate]\nbeam = 2\ncpu = true\nlongtail_level = "token"\n{evaluate}\n{methods}')


def pipeline(cwd, *extra, check=True):
    return run_cli(["python", SCRIPT, "r.toml", "--out", "exp", *extra], cwd=cwd, check=check, timeout=600)


def dry_run_state(cwd):
    """The "to do" column of --dry-run for the one run."""
    table = pipeline(cwd, "--dry-run").stdout.split("\n\n")[1].splitlines()[2:]
    (line,) = table
    return re.split(r"\s{2,}", line.strip(), maxsplit=3)[-1]


def reprepare(work, test_sentences=40, vocabulary=None):
    """The toy corpus binarised again into work/data-bin, with another test split size or a
    smaller (joined) vocabulary."""
    text = write_toy_corpus(work / "text", splits=(("train", 400), ("valid", 40), ("test", test_sentences)))
    shutil.rmtree(work / "data-bin")
    if vocabulary is None:
        return preprocess(text, work / "data-bin")
    run_cli(["fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", text / "train",
             "--validpref", text / "valid", "--testpref", text / "test", "--destdir", work / "data-bin",
             "--workers", "1", "--joined-dictionary", "--nwordssrc", str(vocabulary)])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A directory holding a toy data-bin, recipe r.toml and experiment exp/ with one finished run
    (relative paths throughout, so that a copy runs the same commands)."""
    work = tmp_path_factory.mktemp("finished")
    preprocess(write_toy_corpus(work / "text"), work / "data-bin")
    (work / "r.toml").write_text(recipe_text())
    pipeline(work)
    return work


@pytest.fixture
def work(finished, tmp_path):
    copy = tmp_path / "work"
    shutil.copytree(finished, copy)  # keeps mtimes: the copy's run is as finished as the original
    assert dry_run_state(copy) == "finished (skipped)"
    return copy


def test_finished_run_leaves_no_lock_and_records_its_data(finished):
    assert not (finished / "exp" / ".experiment.lock").exists()
    info = json.loads((finished / "exp" / RUN / "run.json").read_text())
    assert info["data_fingerprint"]["dict.src.txt"]["entries"] == 84
    assert "train.src-tgt.src.bin" in info["data_fingerprint"] and "test.src-tgt.src.bin" not in info["data_fingerprint"]
    done = json.loads((finished / "exp" / RUN / "eval.done").read_text())
    assert done["checkpoint_file"]["file"] == "checkpoint_last.pt" and "test.src-tgt.tgt.idx" in done["data_fingerprint"]


def test_changed_vocabulary_refuses_the_trained_run(work):
    # before: the run was skipped as finished and the report rebuilt from its old evaluation, exit 0
    reprepare(work, vocabulary=30)
    state = dry_run_state(work)
    assert re.fullmatch(r"refused: trained on other data \(dict.src.txt 84 -> 2\d entries; dict.tgt.txt 84 -> 2\d "
                        r"entries\)", state), state
    log = (work / "exp" / RUN / "train.log").stat().st_mtime_ns
    proc = pipeline(work, check=False)
    assert proc.returncode == 1 and "already finished" not in proc.stdout
    status = json.loads((work / "exp" / "experiment.json").read_text())["runs"][RUN]
    assert status.startswith(f"failed: exp/{RUN} was trained on other data than data-bin now holds "
                             f"(dict.src.txt 84 -> 2"), status
    assert status.endswith("remove that directory to run it again, or choose another --out")
    assert (work / "exp" / RUN / "train.log").stat().st_mtime_ns == log


def test_reprepared_test_split_is_evaluated_again(work):
    reprepare(work, test_sentences=20)  # same training data and dictionaries, a shorter test split
    state = dry_run_state(work)
    assert state.startswith("evaluate again (test data in data-bin changed (test.src-tgt.src.bin "), state
    log = (work / "exp" / RUN / "train.log").stat().st_mtime_ns
    proc = pipeline(work)
    assert "evaluating again (test data in data-bin changed" in proc.stdout
    assert len((work / "exp" / RUN / "eval" / "test" / "hyp.txt").read_text().splitlines()) == 20
    assert (work / "exp" / RUN / "train.log").stat().st_mtime_ns == log  # not trained again
    assert dry_run_state(work) == "finished (skipped)"


def test_changed_checkpoint_is_evaluated_again(work):
    checkpoint = work / "exp" / RUN / "checkpoints" / "checkpoint_last.pt"
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    assert dry_run_state(work) == "evaluate again (checkpoint_last.pt changed since it was evaluated)"


@pytest.mark.parametrize("content", ["", "{", "[]"])
def test_corrupt_eval_done_is_evaluated_again(work, content):
    # before: a JSONDecodeError traceback in --dry-run and "failed: Expecting value: ..." naming no file
    done = work / "exp" / RUN / "eval.done"
    done.write_text(content)
    state = dry_run_state(work)
    assert state.startswith(f"evaluate again (evaluation record exp/{RUN}/eval.done "), state
    if content:
        return  # one real run is enough
    proc = pipeline(work)
    assert f"evaluating again (evaluation record exp/{RUN}/eval.done is not valid JSON" in proc.stdout
    assert json.loads(done.read_text())["beam"] == 2 and dry_run_state(work) == "finished (skipped)"


@pytest.mark.parametrize("content,problem", [("", "is not valid JSON"), ('{"seed": 1}', "has no train_command list")])
def test_corrupt_run_json_is_refused_naming_the_file(work, content, problem):
    (work / "exp" / RUN / "run.json").write_text(content)
    assert dry_run_state(work).startswith(f"refused: "), dry_run_state(work)
    assert f"exp/{RUN}/run.json {problem}" in dry_run_state(work)
    proc = pipeline(work, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    status = json.loads((work / "exp" / "experiment.json").read_text())["runs"][RUN]
    assert f"exp/{RUN}/run.json {problem}" in status and status.endswith("or choose another --out")
    assert (work / "exp" / RUN / "run.json").read_text() == content  # left for the user to look at


def write(tmp_path, text):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    return recipe


@pytest.mark.parametrize("change,message", [
    ({"evaluate": "lenpen = nan"}, r"\[evaluate\] lenpen must be a finite number, got nan"),
    ({"evaluate": "lenpen = inf"}, r"\[evaluate\] lenpen must be a finite number, got inf"),
    ({"seeds": "[1, 1]"}, r"seeds repeat \[1\]: each seed is one run directory"),
    ({"seeds": "[-1]"}, r"seeds must be a non-empty list of integers in \[0, 2\^32\)"),
    ({"methods": '[[methods]]\nkind = "labo"\ntau = 1e-9'},
     rf'methods\[0\]\.tau must be a number >= {TAU_MIN:g} or "inf", got 1e-09'),
    ({"methods": '[[methods]]\nkind = "tsla"\nstop_update = 5\ntau = nan'}, r"methods\[0\]\.tau must be a number"),
    ({"methods": '[[methods]]\nkind = "ls"\nlabel_smoothing = nan'}, r"label_smoothing must be a number in \[0, 1\)"),
    ({"methods": '[[methods]]\nkind = "ivon"\nlr = 0.1\ness = inf'}, r"methods\[0\]\.ess must be a finite number > 0"),
    ({"methods": '[[methods]]\nkind = "ivon"\nlr = 0.1\nhess_init = nan'}, r"hess_init must be a finite number > 0"),
    ({"methods": '[[methods]]\nkind = "ivon"\nlr = inf'}, r"methods\[0\]\.lr must be a finite number > 0"),
    ({"methods": '[[methods]]\nkind = "ivon"\ncriterion = "labo"\nlr = 1\ntau = 0'}, r"methods\[0\]\.tau must be"),
])
def test_recipe_check_refuses_what_training_or_evaluation_would_refuse_later(tmp_path, change, message):
    # before: each of these loaded, then trained (or failed at fairseq's start-up, or at evaluation)
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path, recipe_text(**change)))


def test_recipe_check_accepts_the_limits(tmp_path):
    recipe = load_recipe(write(tmp_path, recipe_text(
        seeds="[0, 4294967295]", evaluate="lenpen = -0.5",
        methods=f'[[methods]]\nkind = "labo"\ntau = [{TAU_MIN}, "inf"]\n[[methods]]\nkind = "ivon"\nlr = 0.5\n'
                f'ess = 1e6\nhess_init = 0.1')))
    assert [m.name for m in recipe.methods] == [f"labo-a0.1-tau{TAU_MIN:g}", "labo-a0.1-tauinf", "ivon-ce-lr0.5"]


def test_missing_test_split_is_refused_before_training(toy_data_bin, tmp_path):
    # before: both runs trained fully, then failed at evaluation
    recipe = write(tmp_path, recipe_text(data_bin=toy_data_bin, subsets='["test", "test5"]'))
    for extra in (["--dry-run"], []):
        proc = run_cli(["python", SCRIPT, recipe, "--out", tmp_path / "exp", *extra], check=False)
        assert proc.returncode == 2
        assert proc.stderr.strip() == (f"run_experiment.py: error: {recipe}: [data] subsets names test5, which "
                                       f"{toy_data_bin} does not hold (its splits: test, train, valid)")
    assert not (tmp_path / "exp" / RUN).exists() and not (tmp_path / "exp" / ".experiment.lock").exists()


def test_lock_file_goes_on_failure_and_interrupt(toy_data_bin, tmp_path, monkeypatch, capsys):
    recipe = load_recipe(write(tmp_path, recipe_text(data_bin=toy_data_bin)))
    out = tmp_path / "exp"

    class Interrupting(experiment.LocalLauncher):  # a launcher stopped while its runs run
        def __call__(self, recipe, runs, subsets):
            assert (out / ".experiment.lock").exists() and [r.name for r in runs] == [RUN]
            raise Interrupted()

    with pytest.raises(Interrupted):
        experiment.run_experiment(recipe, out, launcher=Interrupting())
    assert not (out / ".experiment.lock").exists()
    monkeypatch.setattr(experiment.pipeline, "prepare_data", lambda recipe: (_ for _ in ()).throw(RecipeError("no data")))
    with pytest.raises(RecipeError, match="no data"):
        experiment.run_experiment(recipe, out)
    assert not (out / ".experiment.lock").exists()


def test_lock_held_by_a_live_pipeline_is_left_alone(toy_data_bin, tmp_path):
    out = tmp_path / "exp"
    held = OutputLock(out)
    recipe = write(tmp_path, recipe_text(data_bin=toy_data_bin))
    proc = run_cli(["python", SCRIPT, recipe, "--out", out], check=False)
    assert proc.returncode == 2 and "is in use by another experiment" in proc.stderr
    assert (out / ".experiment.lock").exists()
    with pytest.raises(RecipeError, match="in use"):
        OutputLock(out)
    held.release()
    assert not (out / ".experiment.lock").exists()


def test_lock_released_between_open_and_flock_is_taken_on_the_new_file(tmp_path, monkeypatch):
    first = OutputLock(tmp_path)
    real_flock = fcntl.flock
    calls = []

    def flock(handle, operation):
        if not calls:
            first.release()  # the holder exits after this process opened the old file
        calls.append(Path(f"/proc/self/fd/{handle.fileno()}").resolve().name)
        return real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    second = OutputLock(tmp_path)
    assert calls[0].endswith("(deleted)") and len(calls) == 2  # the unlinked file was left for the new one
    assert os.stat(second.path).st_ino == os.fstat(second._file.fileno()).st_ino
    monkeypatch.setattr(fcntl, "flock", real_flock)
    with pytest.raises(RecipeError, match="in use"):
        OutputLock(tmp_path)
    second.release()
