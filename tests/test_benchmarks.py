"""The benchmark scripts on tiny CPU shapes: options, skipped rows, JSON output, argument errors."""
import importlib.util
import inspect
import json
import subprocess
import sys

import pytest
import torch

from labo_fairseq.functional import labo_cross_entropy, labo_linear_cross_entropy
from tests.toy import REPO_ROOT

BENCH_LOSS = str(REPO_ROOT / "scripts" / "bench_loss.py")
BENCH_TRAIN = str(REPO_ROOT / "scripts" / "bench_train.py")
TINY = ["--device", "cpu", "--tokens", "32", "--vocab", "64", "--dim", "8", "--repeats", "1"]


def run(script, *args, timeout=300):
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT)


def peer_skip_reason(package):
    # absent here; an installed peer is still skipped on CPU because it is Triton-only
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed"
    return f"{package} is Triton-only: needs --device cuda"


def test_bench_loss_tiny_cpu_rows_json_and_skipped_peers(tmp_path):
    out = tmp_path / "rows.json"
    proc = run(BENCH_LOSS, *TINY, "--variants", "fairseq", "chunked", "liger-ce", "fused", "cce", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    for variant, package in (("liger-ce", "liger_kernel"), ("cce", "cut_cross_entropy")):
        assert f"{variant} skipped (32x64): {peer_skip_reason(package)}" in proc.stdout, proc.stdout

    data = json.loads(out.read_text())
    assert data["device"]["device_name"] and f"device: {data['device']['device_name']} (cpu)" in proc.stdout
    assert data["settings"]["dtype"] == "float32" and data["settings"]["repeats"] == 1
    rows = {row["variant"]: row for row in data["rows"]}
    assert list(rows) == ["fairseq", "chunked[torch]", "liger-ce", "fused[torch]", "cce"]
    assert {v: r["status"] for v, r in rows.items()} == {
        "fairseq": "ok", "chunked[torch]": "ok", "liger-ce": "skipped", "fused[torch]": "ok", "cce": "skipped"}
    for variant in ("fairseq", "chunked[torch]", "fused[torch]"):
        row = rows[variant]
        assert row["time_s"] > 0 and row["extra_bytes"] >= 0 and len(row["runs"]) == 1, row
        assert (row["tokens"], row["vocab"]) == (32, 64)
    assert rows["fairseq"]["time_vs_baseline"] == 1.0
    chunked = rows["chunked[torch]"]
    assert chunked["baseline"] == "fairseq"
    assert chunked["time_vs_baseline"] == pytest.approx(chunked["time_s"] / rows["fairseq"]["time_s"])
    assert chunked["time_vs_liger"] is None  # no Liger row was measured
    # the linear rows' baseline (linear+fairseq) was not asked for: no ratio rather than a wrong one
    assert rows["fused[torch]"]["dim"] == 8 and rows["fused[torch]"]["time_vs_baseline"] is None
    # the table: one line per row, skipped rows included
    table = [line for line in proc.stdout.splitlines() if line.startswith("| 32x64")]
    assert len(table) == 5 and "skipped" in table[2], table


@pytest.mark.parametrize("args, message", [
    (["--tokens", "8"], "--tokens and --vocab: give both"),
    (["--device", "gpu"], "argument --device: expected cpu, cuda or cuda:N"),
    (["--alpha", "1.5"], "--alpha: must be in [0, 1)"),
    (["--tau", "1e-9"], "--tau: must be >= 0.0001 (inf allowed), got 1e-09"),
    (["--shapes", "cpu", "--tokens", "8", "--vocab", "16"], "--shapes: give either"),
    (["--device", "cuda", "--iters", "2"], "--iters: CPU only"),
    (["--json", "/"], "argument --json: / is a directory; give a file name"),
    (["--json", str(REPO_ROOT / "README.md" / "rows.json")], "README.md is a file, not a directory"),
])
def test_bench_loss_argument_errors_are_one_line(args, message):
    proc = run(BENCH_LOSS, *args)
    assert proc.returncode == 2
    assert message in proc.stderr.splitlines()[-1] and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_bench_loss_cuda_without_a_gpu_is_an_argument_error():
    proc = run(BENCH_LOSS, "--device", "cuda", "--tokens", "8", "--vocab", "16")
    assert proc.returncode == 2
    assert "--device cuda: CUDA is not available" in proc.stderr.splitlines()[-1], proc.stderr


def _has_impl():
    return all("impl" in inspect.signature(fn).parameters for fn in (labo_cross_entropy, labo_linear_cross_entropy))


@pytest.mark.skipif(not _has_impl(), reason="labo_fairseq.functional has no impl argument yet (no Triton kernels)")
def test_bench_loss_triton_rows_under_the_interpreter(tmp_path):
    out = tmp_path / "rows.json"
    variants = ["chunked[triton]", "fused[triton]"]
    if "inplace_grad" in inspect.signature(labo_cross_entropy).parameters:
        variants.append("chunked[triton,inplace]")
    proc = run(BENCH_LOSS, *TINY, "--interpret", "--variants", *variants, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "their times are not performance numbers" in proc.stdout
    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    assert {v: r["status"] for v, r in rows.items()} == {v: "ok" for v in variants}, rows


def test_bench_loss_triton_rows_skip_without_interpret_on_cpu(tmp_path):
    proc = run(BENCH_LOSS, *TINY, "--variants", "chunked[triton]")
    assert proc.returncode == 0, proc.stderr
    expected = ("need --device cuda (or --interpret" if _has_impl()
                else "labo_fairseq.functional has no impl argument")
    assert "chunked[triton] skipped (32x64): " in proc.stdout and expected in proc.stdout, proc.stdout


def test_bench_train_help_lists_the_gpu_options():
    proc = run(BENCH_TRAIN, "--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--device {cpu,cuda}", "--precision {fp32,fp16,bf16,amp}", "labo-fused-triton",
                   "labo-unfused-torch", "peak GPU memory"):
        assert option in " ".join(proc.stdout.split()), option


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp16"], "--precision fp16: half precision needs --device cuda"),
    (["--variants", "ls", "labo-fused-triton"], "--variants labo-fused-triton: the Triton kernels need --device cuda"),
    (["--variants", "labo-fused"], "--variants must include ls"),
    (["--out", "/"], "argument --out: / is a directory; give a file name"),
    (["--vocab", "0"], "--vocab: every size must be >= 8"),
    (["--dim", "7"], "--dim: must be a multiple of 4"),
    (["--updates", "9", "--log-interval", "5"], "--updates: must be at least 2 x --log-interval (10)"),
])
def test_bench_train_argument_errors_are_one_line(args, message):
    proc = run(BENCH_TRAIN, *args)
    assert proc.returncode == 2
    assert message in proc.stderr.splitlines()[-1] and "Traceback" not in proc.stderr, proc.stderr


def test_bench_train_cuda_worker_trains_with_the_plugin(toy_data_bin, tmp_path):
    """The worker that --device cuda runs fairseq-train in (to read the allocator's peak) imports
    labo_fairseq before fairseq, which makes fairseq's --user-dir skip it: the worker registers the
    criterion itself. Run here on the CPU, where it needs no GPU."""
    from tests.toy import TINY_TRANSFORMER_ARGS, USER_DIR

    worker = REPO_ROOT / "labo_fairseq" / "benchmarks" / "train.py"
    proc = subprocess.run([sys.executable, worker, "--fairseq-train-worker", toy_data_bin, "--cpu",
                           *TINY_TRANSFORMER_ARGS, "--user-dir", USER_DIR, "--criterion", "label_smoothed_labo",
                           "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500",
                           "--max-update", "2", "--no-save", "--disable-validation", "--save-dir", tmp_path],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "num_updates 2" in proc.stdout + proc.stderr


def test_bench_train_keeps_the_cuda_peak_across_fairseqs_resets():
    """fairseq resets the allocator's peak statistics after every update; the benchmark's peak is
    the largest over the whole run, not the one after the last update."""
    from labo_fairseq.benchmarks.train import PeaksAcrossResets

    class FakeCuda:
        def __init__(self):
            self.peak_allocated, self.peak_reserved, self.resets = 0, 0, 0

        def max_memory_allocated(self):
            return self.peak_allocated

        def max_memory_reserved(self):
            return self.peak_reserved

        def reset_peak_memory_stats(self):
            self.resets += 1
            self.peak_allocated = self.peak_reserved = 0

    cuda = FakeCuda()
    peaks = PeaksAcrossResets(cuda)
    for allocated in (300, 900, 500):  # three updates, fairseq resetting after each
        cuda.peak_allocated, cuda.peak_reserved = allocated, 2 * allocated
        cuda.reset_peak_memory_stats()
    cuda.peak_allocated, cuda.peak_reserved = 100, 200  # after the last update
    assert peaks.peaks() == (900, 1800) and cuda.resets == 3
