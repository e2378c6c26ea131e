"""`fairseq-train --user-dir labo_fairseq --criterion label_smoothed_labo` through the real CLIs."""
import re

import pytest

from tests.toy import TINY_TRANSFORMER_ARGS, USER_DIR, run_cli, train, train_inner, train_two_gloo_workers

LABO = ["--user-dir", USER_DIR, "--criterion", "label_smoothed_labo"]


def test_labo_training_runs_and_logs_fairseq_keys(toy_data_bin, tmp_path):
    proc = train(toy_data_bin, tmp_path / "ckpt", [*LABO, "--report-accuracy"], max_update=30)
    rows = train_inner(proc.stdout)
    assert sorted(rows) == list(range(1, 31))
    for key in ("loss", "nll_loss", "ppl", "q_entropy", "accuracy", "wpb"):
        assert key in rows[1], key
    first = sum(float(rows[u]["loss"]) for u in range(1, 4)) / 3
    last = sum(float(rows[u]["loss"]) for u in range(28, 31)) / 3
    assert last < first - 0.5, (first, last)
    # fairseq's label-smoothing keys first (with --report-accuracy: total, n_correct), then q_entropy
    assert re.search(r"valid on 'valid' subset \| loss [\d.]+ \| nll_loss [\d.]+ \| total \d+ \| n_correct \d+ \| "
                     r"q_entropy [\d.]+ \| ppl [\d.]+ \| accuracy [\d.]+", proc.stdout)
    assert (tmp_path / "ckpt" / "checkpoint_best.pt").exists()


def test_tau_inf_reproduces_fairseq_label_smoothing_update_by_update(toy_data_bin, tmp_path):
    labo = train_inner(train(toy_data_bin, tmp_path / "labo", [*LABO, "--labo-tau", "inf"], max_update=12).stdout)
    ls = train_inner(train(toy_data_bin, tmp_path / "ls", ["--criterion", "label_smoothed_cross_entropy",
                                                           "--label-smoothing", "0.1"], max_update=12).stdout)
    assert sorted(labo) == sorted(ls) == list(range(1, 13))
    for update in ls:
        for key in ("loss", "nll_loss", "gnorm"):
            # fairseq prints 3 decimals: allow one unit of rounding
            assert float(labo[update][key]) == pytest.approx(float(ls[update][key]), abs=1.01e-3), (update, key)


def test_tsla_stops_smoothing_after_n_updates_and_across_a_resume(toy_data_bin, tmp_path):
    save_dir = tmp_path / "ckpt"
    first = train_inner(train(toy_data_bin, save_dir, [*LABO, "--smoothing-stop-update", "8"], max_update=10).stdout)
    for update, row in first.items():
        smoothed = update <= 8  # the first 8 updates smooth; from the 9th on alpha = 0
        assert (row["loss"] != row["nll_loss"]) == smoothed, (update, row["loss"], row["nll_loss"])
    # Resume from checkpoint_last.pt: training continues at update 11 and stays unsmoothed.
    proc = train(toy_data_bin, save_dir, [*LABO, "--smoothing-stop-update", "8"], max_update=14)
    assert "Loaded checkpoint" in proc.stdout or "loaded checkpoint" in proc.stdout
    resumed = train_inner(proc.stdout)
    assert sorted(resumed) == [11, 12, 13, 14]
    assert all(row["loss"] == row["nll_loss"] for row in resumed.values())


def test_generate_from_a_labo_checkpoint(toy_data_bin, tmp_path):
    train(toy_data_bin, tmp_path / "ckpt", LABO, max_update=10)
    proc = run_cli(["fairseq-generate", toy_data_bin, "--path", tmp_path / "ckpt" / "checkpoint_best.pt",
                    "--user-dir", USER_DIR, "--cpu", "--beam", "2", "--batch-size", "16"])
    assert sum(line.startswith("H-") for line in proc.stdout.splitlines()) == 40
    assert "BLEU4 = " in proc.stdout


def test_two_process_gloo_data_parallel_matches_single_process_across_a_resume(toy_data_bin, tmp_path):
    """2 workers x 1 batch per update == 1 worker x update-freq 2 over the same batches, with the
    2 workers stopped after update 3 and resumed from checkpoint_last.pt: rank 0 loads it and
    broadcasts the state (with its omegaconf config) to rank 1, as fairseq does by default."""
    common = [str(toy_data_bin), "--cpu", *TINY_TRANSFORMER_ARGS, "--dropout", "0", "--optimizer", "adam", "--lr", "1e-3",
              "--max-tokens", "500", "--seed", "1", "--disable-validation",
              "--log-format", "simple", "--log-interval", "1", "--no-progress-bar", *LABO]
    save = ["--save-dir", str(tmp_path / "ddp"), "--no-epoch-checkpoints"]
    first = train_two_gloo_workers([*common, *save, "--max-update", "3"])
    resumed = train_two_gloo_workers([*common, *save, "--max-update", "6"])
    assert "Loaded checkpoint" in resumed[0] and "(epoch 1 @ 3 updates)" in resumed[0]
    distributed = {**train_inner(first[0]), **train_inner(resumed[0])}
    assert sorted(train_inner(resumed[0])) == [4, 5, 6]
    single = train_inner(run_cli(["fairseq-train", *common, "--max-update", "6", "--no-save", "--update-freq", "2"]).stdout)
    assert sorted(distributed) == sorted(single) == list(range(1, 7))
    for update in single:
        for key in ("loss", "nll_loss", "q_entropy", "gnorm", "wpb"):
            assert float(distributed[update][key]) == pytest.approx(float(single[update][key]), abs=1.01e-3), (update, key)


@pytest.mark.parametrize("flag,value,message", [
    ("--labo-tau", "1e-40", "--labo-tau must be >= 0.0001 (or inf), got 1e-40"),
    ("--label-smoothing", "1.0", "--label-smoothing must be in [0, 1), got 1.0"),
])
def test_invalid_flag_is_one_line_through_fairseq_train(toy_data_bin, tmp_path, flag, value, message):
    with pytest.raises(AssertionError) as failed:
        train(toy_data_bin, tmp_path / "ckpt", [*LABO, flag, value], max_update=1)
    # 2: refused before anything was produced (no save directory either)
    assert " exited 2\n" in str(failed.value) and not (tmp_path / "ckpt").exists()
    stderr = str(failed.value).split("--- stderr ---", 1)[1]
    errors = [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == [f"fairseq-train: error: {message}"]


def test_adaptive_softmax_is_refused_before_training_starts(toy_data_bin, tmp_path):
    """The patched fairseq-train asks the criterion to check the model right after building it:
    one error line, before any epoch begins (the refusal used to come at the first batch)."""
    arch = [a for a in TINY_TRANSFORMER_ARGS if a != "--share-decoder-input-output-embed"]
    proc = run_cli(["fairseq-train", str(toy_data_bin), "--cpu", *arch, "--adaptive-softmax-cutoff", "20,40",
                    "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500", "--max-update", "2",
                    "--save-dir", str(tmp_path / "ckpt"), "--no-progress-bar", *LABO], check=False)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert proc.returncode == 2 and errors == [
        "fairseq-train: error: label_smoothed_labo does not support adaptive softmax (--adaptive-softmax-cutoff): "
        "LABO's smoothing needs log-probabilities over the whole vocabulary"], proc.stderr[-3000:]
    assert "begin training epoch" not in proc.stdout + proc.stderr
    assert not (tmp_path / "ckpt").exists()  # refused before the save directory was made
