"""The roofline model of `labo-bench loss --model`: what it counts, per op."""
import subprocess
import sys

import pytest

from labo_fairseq.benchmarks import roofline

N, V, D = 8192, 32768, 1024


def _op(ops, prefix):
    return next(steps for name, steps in ops.items() if name.startswith(prefix))


def test_bytes_and_flops_are_what_the_code_moves_and_computes():
    machine = roofline.Machine()
    ops = roofline.model_ops(N, V, D, 2, machine)
    # the logits kernel reads each logit once from HBM and writes its gradient in place
    assert sum(step.hbm_bytes for step in ops["chunked[triton,inplace]"]) == 2 * 2 * N * V
    assert sum(step.hbm_bytes for step in ops["fairseq (logits)"]) == roofline.fairseq_bytes_per_element(2) * N * V
    fused = _op(ops, "fused[triton]")
    # logits, grad_hidden and grad_weight: three GEMMs of 2 N V d FLOPs, whatever the chunking
    assert sum(step.flops for step in fused) == pytest.approx(6.0 * N * V * D)
    assert sum(step.flops for step in ops["linear+fairseq"]) == pytest.approx(6.0 * N * V * D)
    # more, smaller chunks read the weight more often: more traffic, never less time
    small = _op(roofline.model_ops(N, V, D, 2, machine, workspace_bytes=256 * V * 2), "fused[triton]")
    assert sum(s.hbm_bytes for s in small) > sum(s.hbm_bytes for s in fused)
    assert sum(s.seconds for s in small) >= sum(s.seconds for s in fused)


def test_instruction_counts_can_bound_a_streaming_kernel():
    machine = roofline.Machine()
    memory_only = roofline.model_ops(N, V, D, 2, machine)["chunked[triton,inplace]"][0]
    heavy = {"row_stats+grad": {"sass_per_element": 500.0, "mufu_per_element": 1.0}}
    issue = roofline.model_ops(N, V, D, 2, machine, heavy)["chunked[triton,inplace]"][0]
    assert memory_only.bound == "memory" and issue.bound == "issue" and issue.seconds > memory_only.seconds
    assert issue.seconds == pytest.approx(machine.issue_time(500.0 * N * V))


def test_bench_loss_model_prints_the_table_and_refuses_bad_machines():
    run = [sys.executable, "-m", "labo_fairseq.cli", "bench", "loss", "--model", "--tokens", "512", "--vocab", "4096",
           "--dim", "256"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Predicted lower bounds, not GPU timings" in proc.stdout
    for op in ("fairseq (logits)", "chunked[triton,inplace]", "linear+fairseq", "fused[triton]"):
        assert f"| {op}" in proc.stdout, proc.stdout
    bad = subprocess.run(run + ["--bandwidth", "0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("--bandwidth: must be a positive number, got 0.0")
