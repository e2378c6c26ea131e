"""`--bf16` in the patched fairseq: TPU mode only on a TPU host, bf16 training with --cpu."""
import argparse
import math

import pytest
import torch
from fairseq import checkpoint_utils, options

from tests.criterions.test_train_cli import LABO
from tests.toy import USER_DIR, train_inner
from tests.toy import run_cli, train

LS = ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]


def parse_training_args(flags, cuda_available, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["data-bin", "--arch", "transformer", *flags])


@pytest.mark.parametrize(
    "flags, cuda_available, tpu",
    [
        (["--bf16"], True, False),  # the reported crash: a CUDA GPU was sent down the XLA path
        (["--bf16"], False, True),  # no CUDA, no --cpu: a TPU host, as in stock fairseq
        (["--bf16", "--cpu"], False, False),
        (["--bf16", "--cpu"], True, False),
        (["--memory-efficient-bf16"], True, False),
        (["--memory-efficient-bf16"], False, True),
        (["--bf16", "--tpu"], True, True),  # an explicit --tpu is kept
        ([], False, False),  # without --bf16 nothing implies TPU mode
    ],
)
def test_bf16_implies_tpu_only_without_cuda_and_without_cpu(flags, cuda_available, tpu, monkeypatch):
    args = parse_training_args(flags, cuda_available, monkeypatch)
    assert args.tpu is tpu
    assert args.bf16 is bool(flags)


@pytest.mark.parametrize("cpu, cuda_available, expected", [
    (False, True, False), (False, False, True), (True, False, False), (True, True, False),
])
def test_bf16_implies_tpu_decision(cpu, cuda_available, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    assert options.bf16_implies_tpu(argparse.Namespace(cpu=cpu)) is expected


@pytest.mark.parametrize("other", ["--fp16", "--memory-efficient-fp16", "--amp"])
@pytest.mark.parametrize("cuda_available", [True, False])
def test_bf16_with_another_precision_is_a_one_line_error(other, cuda_available, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_training_args(["--bf16", other], cuda_available, monkeypatch)
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.endswith("error: --bf16 cannot be combined with --fp16 or --amp: choose one precision")


def assert_finite_losses(rows, updates):
    assert sorted(rows) == list(updates)
    for update, row in rows.items():
        assert math.isfinite(float(row["loss"])) and math.isfinite(float(row["nll_loss"])), (update, row)
        assert "loss_scale" not in row  # bf16 trains without fp16's loss scaler


def assert_bf16_checkpoint(path, optimizer_name):
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert state["cfg"]["common"]["bf16"] and not state["cfg"]["common"]["tpu"]
    # fairseq's mixed-precision wrapper (fp32 master weights); with fp16 it would also save a loss scale
    assert state["optimizer_history"][-1]["optimizer_name"] == optimizer_name
    assert "loss_scale" not in state["last_optimizer_state"]


def test_cpu_bf16_trains_label_smoothing_close_to_fp32(toy_data_bin, tmp_path):
    extra = ["--dropout", "0"]
    fp32 = train_inner(train(toy_data_bin, tmp_path / "fp32", LS, max_update=6, extra=extra).stdout)
    proc = train(toy_data_bin, tmp_path / "bf16", LS, max_update=6, extra=[*extra, "--bf16"])
    assert "'cpu': True, 'tpu': False, 'bf16': True" in proc.stdout
    bf16 = train_inner(proc.stdout)
    assert_finite_losses(bf16, range(1, 7))
    losses = [(float(fp32[u]["loss"]), float(bf16[u]["loss"])) for u in range(1, 7)]
    # Same batches and initial weights: bf16 rounding moves the losses a little, never far.
    assert all(abs(a - b) < 0.1 for a, b in losses), losses
    assert any(a != b for a, b in losses), "bf16 run logged exactly the fp32 losses: was bf16 in effect?"
    assert_bf16_checkpoint(tmp_path / "bf16" / "checkpoint_last.pt", "FP16Optimizer")


def test_cpu_bf16_trains_labo_resumes_and_generates(toy_data_bin, tmp_path):
    save_dir = tmp_path / "ckpt"
    proc = train(toy_data_bin, save_dir, LABO, max_update=6, extra=["--bf16"])
    assert "'tpu': False, 'bf16': True" in proc.stdout
    rows = train_inner(proc.stdout)
    assert_finite_losses(rows, range(1, 7))
    assert all(math.isfinite(float(row["q_entropy"])) for row in rows.values())
    assert_bf16_checkpoint(save_dir / "checkpoint_last.pt", "FP16Optimizer")

    # Resuming restores the fp32 master weights and the optimizer state (no loss scale to restore).
    proc = train(toy_data_bin, save_dir, LABO, max_update=8, extra=["--bf16"])
    assert "Loaded checkpoint" in proc.stdout
    assert_finite_losses(train_inner(proc.stdout), [7, 8])

    proc = run_cli(["fairseq-generate", toy_data_bin, "--path", save_dir / "checkpoint_last.pt",
                    "--user-dir", USER_DIR, "--cpu", "--bf16", "--beam", "2", "--batch-size", "16"])
    assert sum(line.startswith("H-") for line in proc.stdout.splitlines()) == 40
    assert "BLEU4 = " in proc.stdout


def test_cpu_memory_efficient_bf16_trains_labo(toy_data_bin, tmp_path):
    proc = train(toy_data_bin, tmp_path / "ckpt", LABO, max_update=4, extra=["--memory-efficient-bf16"])
    assert_finite_losses(train_inner(proc.stdout), range(1, 5))
    assert_bf16_checkpoint(tmp_path / "ckpt" / "checkpoint_last.pt", "MemoryEfficientFP16Optimizer")
