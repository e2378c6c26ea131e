"""`fairseq-train --task translation_ivon --optimizer ivon` through the real CLIs."""

import pytest

from tests.toy import (TINY_TRANSFORMER_ARGS, USER_DIR, fairseq_train_runs, run_cli, train_inner,
                       train_two_gloo_workers)

IVON = ["--user-dir", USER_DIR, "--task", "translation_ivon", "--optimizer", "ivon", "--lr", "0.1"]


def ivon_args(data_bin, save_dir, *extra, max_update=10):
    """fairseq-train's arguments for tests.toy.train's tiny transformer, with IVON instead of Adam."""
    return [data_bin, "--cpu", *TINY_TRANSFORMER_ARGS, *IVON, "--max-tokens", "500", "--max-update", str(max_update),
            "--save-dir", save_dir, "--seed", "1", "--log-format", "simple", "--log-interval", "1",
            "--no-progress-bar", "--no-epoch-checkpoints", *extra]


def ivon_train(data_bin, save_dir, *extra, max_update=10, check=True):
    return run_cli(["fairseq-train", *ivon_args(data_bin, save_dir, *extra, max_update=max_update)], check=check)


def test_ivon_with_labo_lowers_the_loss_logs_diagnostics_and_generates(toy_data_bin, tmp_path):
    proc = ivon_train(toy_data_bin, tmp_path / "ckpt", "--criterion", "label_smoothed_labo",
                      "--ivon-noise-interval", "5", max_update=30)
    rows = train_inner(proc.stdout)
    assert sorted(rows) == list(range(1, 31))
    first = sum(float(rows[u]["loss"]) for u in range(1, 4)) / 3
    last = sum(float(rows[u]["loss"]) for u in range(28, 31)) / 3
    assert last < first - 0.5, (first, last)
    for row in rows.values():
        assert 0 < float(row["ivon_sigma"]) < 1 and 0 < float(row["ivon_label_noise"]) < 1, row
    assert "q_entropy" in rows[1]
    assert "IVON effective sample size" in proc.stdout + proc.stderr
    gen = run_cli(["fairseq-generate", toy_data_bin, "--path", tmp_path / "ckpt" / "checkpoint_best.pt",
                   "--user-dir", USER_DIR, "--cpu", "--beam", "2", "--batch-size", "16"])
    assert sum(line.startswith("H-") for line in gen.stdout.splitlines()) == 40


def test_resume_gives_the_updates_of_an_uninterrupted_run(toy_data_bin, tmp_path):
    extra = ("--ivon-mc-samples", "2")
    whole = train_inner(ivon_train(toy_data_bin, tmp_path / "whole", *extra, max_update=10).stdout)
    ivon_train(toy_data_bin, tmp_path / "split", *extra, max_update=5)
    proc = ivon_train(toy_data_bin, tmp_path / "split", *extra, max_update=10)
    assert "Loaded checkpoint" in proc.stdout + proc.stderr
    resumed = train_inner(proc.stdout)
    assert sorted(resumed) == list(range(6, 11))
    for update in resumed:
        for key in ("loss", "gnorm", "ivon_sigma"):  # equal at the printed precision
            assert resumed[update][key] == whole[update][key], (update, key)


def _flag_error(proc):
    return [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


REFUSED_FLAGS = [
    (["--ivon-ess", "0"], "--ivon-ess must be > 0 (or left unset), got 0.0"),
    (["--ivon-mc-samples", "0"], "--ivon-mc-samples must be >= 1, got 0"),
    (["--ivon-beta2", "1"], "--ivon-beta2 must be in [0, 1), got 1.0"),
    (["--ivon-beta2", "-0.5"], "--ivon-beta2 must be in [0, 1), got -0.5"),
    (["--fp16"], "--task translation_ivon trains in fp32 only: drop --fp16"),
    (["--task", "translation"], "--optimizer ivon needs its weight samples drawn around forward and backward: "
                                "use --task translation_ivon"),
    (["--optimizer", "adam"], "--task translation_ivon samples weights for --optimizer ivon, not --optimizer adam"),
]


def another_optimizer_args(data_bin, no_save):
    return [data_bin, "--cpu", *TINY_TRANSFORMER_ARGS, "--user-dir", USER_DIR, "--task", "translation_ivon",
            "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500", "--max-update", "2", "--no-progress-bar",
            *(["--no-save"] if no_save else [])]


@pytest.fixture(scope="module")
def refusals(toy_data_bin, tmp_path_factory):
    """fairseq-train's answers to this module's refused flags, run in one process: {case: (proc, directory)}."""
    root = tmp_path_factory.mktemp("ivon-refusals")
    cases = {tuple(flags): ([*ivon_args(toy_data_bin, root / f"ckpt{i}", "--no-save", *flags, max_update=1)], root)
             for i, (flags, _) in enumerate(REFUSED_FLAGS)}
    for no_save in (True, False):
        workdir = root / f"work-no-save-{no_save}"
        workdir.mkdir()
        cases[("another optimizer", no_save)] = (another_optimizer_args(toy_data_bin, no_save), workdir)
    procs = fairseq_train_runs(list(cases.values()))
    return {case: (proc, cwd) for (case, (_, cwd)), proc in zip(cases.items(), procs)}


@pytest.mark.xdist_group("ivon-refusals")  # one worker runs the batch of refusals once
@pytest.mark.parametrize("flags,message", REFUSED_FLAGS)
def test_invalid_flags_are_one_line_errors(refusals, flags, message):
    proc, _ = refusals[tuple(flags)]
    # 2: refused, nothing produced
    assert proc.returncode == 2 and _flag_error(proc) == [f"fairseq-train: error: {message}"], proc.stderr[-3000:]


@pytest.mark.xdist_group("ivon-refusals")
@pytest.mark.parametrize("no_save", [True, False])
def test_another_optimizer_is_refused_before_the_data_is_read(refusals, no_save):
    """--optimizer adam used to fail at the first update only, after reading the data, and to
    leave checkpoints/crash.pt in the working directory even with --no-save."""
    proc, workdir = refusals[("another optimizer", no_save)]
    assert proc.returncode == 2 and _flag_error(proc) == [
        "fairseq-train: error: --task translation_ivon samples weights for --optimizer ivon, not --optimizer adam"
    ], proc.stderr[-3000:]
    assert "examples from" not in proc.stdout + proc.stderr  # fairseq's "loaded N examples from: ..."
    assert list(workdir.iterdir()) == []  # no checkpoints/, no crash.pt


@pytest.mark.parametrize("samples", ["1", "2"])
def test_two_process_gloo_matches_update_freq_2(toy_data_bin, samples):
    """2 workers x 1 batch == 1 worker x --update-freq 2: same weight samples, same statistics."""
    common = [str(toy_data_bin), "--cpu", *TINY_TRANSFORMER_ARGS, *IVON, "--dropout", "0", "--max-tokens", "500",
              "--max-update", "5", "--seed", "1", "--no-save", "--disable-validation", "--log-format", "simple",
              "--log-interval", "1", "--no-progress-bar", "--ivon-mc-samples", samples, "--ivon-noise-interval", "2",
              "--ivon-beta2", "0.99"]  # a Hessian that moves within 5 updates
    outputs = train_two_gloo_workers(common)
    distributed = train_inner(outputs[0])
    single = train_inner(run_cli(["fairseq-train", *common, "--update-freq", "2"]).stdout)
    assert sorted(distributed) == sorted(single) == list(range(1, 6))
    for update in single:
        for key in ("loss", "gnorm", "ivon_sigma", "wpb"):
            assert float(distributed[update][key]) == pytest.approx(float(single[update][key]), abs=1.01e-3), (update, key)
    # sigma moves with the Hessian, identically in both runs
    assert distributed[5]["ivon_sigma"] == single[5]["ivon_sigma"] != single[1]["ivon_sigma"]
