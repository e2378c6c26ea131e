"""Helpers shared by tests that drive the real command-line tools on a tiny synthetic task."""
import json
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

BIN_DIR = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parent.parent

# A 1-layer transformer small enough to train a few dozen updates on CPU in seconds.
TINY_TRANSFORMER_ARGS = [
    "--arch", "transformer",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-decoder-input-output-embed",
]


def toy_pair(rng: random.Random, vocab_size: int = 40):
    """One source/target pair of a learnable toy task: reverse the words and map wN to WN."""
    words = [f"w{rng.randrange(vocab_size)}" for _ in range(rng.randint(3, 10))]
    return " ".join(words), " ".join(w.upper() for w in reversed(words))


def write_toy_corpus(directory: Path, splits=(("train", 400), ("valid", 40), ("test", 40)), seed=0,
                     src="src", tgt="tgt"):
    """Writes `{split}.{src}` / `{split}.{tgt}` text files; returns the directory."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in splits:
        pairs = [toy_pair(rng) for _ in range(n)]
        (directory / f"{split}.{src}").write_text("".join(s + "\n" for s, _ in pairs))
        (directory / f"{split}.{tgt}").write_text("".join(t + "\n" for _, t in pairs))
    return directory


def run_cli(args, cwd=None, timeout=600, check=True, env=None):
    """Runs a command from the venv's bin/ (e.g. ["fairseq-train", ...]) and returns the result.

    On failure the assertion message carries the command's output, which is what one needs to see.
    """
    exe = BIN_DIR / args[0]
    cmd = [str(exe) if exe.exists() else args[0]] + [str(a) for a in args[1:]]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    full_env["PATH"] = f"{BIN_DIR}{os.pathsep}{full_env.get('PATH', '')}"
    if env:
        full_env.update(env)
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def preprocess(text_dir: Path, dest: Path, src="src", tgt="tgt", joined=True):
    args = ["fairseq-preprocess", "--source-lang", src, "--target-lang", tgt,
            "--trainpref", text_dir / "train", "--validpref", text_dir / "valid",
            "--testpref", text_dir / "test", "--destdir", dest, "--workers", "1"]
    if joined:
        args.append("--joined-dictionary")
    run_cli(args)
    return dest


def train(data_bin: Path, save_dir: Path, criterion_args, max_update=10, extra=(), seed=1, cwd=None,
          epoch_checkpoints=False):
    """Trains TINY_TRANSFORMER_ARGS on CPU; returns the CompletedProcess (log in stdout)."""
    args = ["fairseq-train", data_bin, "--cpu", *TINY_TRANSFORMER_ARGS,
            "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500",
            "--max-update", str(max_update), "--save-dir", save_dir, "--seed", str(seed),
            "--log-format", "simple", "--log-interval", "1", "--no-progress-bar",
            *([] if epoch_checkpoints else ["--no-epoch-checkpoints"]), *criterion_args, *extra]
    return run_cli(args, cwd=cwd)


def fairseq_train_runs(runs, timeout=300):
    """[(args, cwd)] -> [CompletedProcess] of `fairseq-train ARGS` run in cwd, one after another in
    a single Python process (tests/fairseq_train_batch.py): for refusals, which fail in a moment
    after seconds of importing fairseq."""
    request = json.dumps([{"argv": [str(a) for a in args], "cwd": str(cwd or REPO_ROOT)} for args, cwd in runs])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "fairseq_train_batch.py")], input=request,
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [subprocess.CompletedProcess(["fairseq-train", *map(str, args)], r["returncode"], r["stdout"], r["stderr"])
            for (args, _), r in zip(runs, json.loads(proc.stdout))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_two_gloo_workers(args, timeout=300):
    """Runs `fairseq-train ARGS --distributed-backend gloo` as 2 local processes (ranks 0 and 1);
    asserts both succeed and returns their outputs."""
    port = str(free_port())
    workers = []
    for rank in (0, 1):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(rank),
                   OMP_NUM_THREADS="1")
        workers.append(subprocess.Popen([str(BIN_DIR / "fairseq-train"), *map(str, args), "--distributed-backend", "gloo"],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [w.communicate(timeout=timeout)[0] for w in workers]
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out[-4000:]
    assert "distributed_world_size': 2" in outputs[0]
    return outputs


USER_DIR = str(REPO_ROOT / "labo_fairseq")


def train_inner(log: str):
    """{num_updates: {key: value}} from fairseq's `--log-format simple` train_inner lines."""
    rows = {}
    for line in log.splitlines():
        if "| train_inner |" in line:
            fields = dict(re.findall(r"(\w+)=([^,\s]+)", line))
            rows[int(fields["num_updates"])] = fields
    return rows
