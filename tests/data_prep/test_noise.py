"""Label noise on the training targets (labo_fairseq.data_prep.noise): rate, alignment,
reproducibility, the by-class ramp, and `labo-prepare multi30k --target-noise` end to end."""
import gzip
import json
import math
import random
from collections import Counter

import numpy as np
import pytest

from labo_fairseq.data_prep import multi30k, noise
from labo_fairseq.data_prep.common import PrepError
from tests.data_prep.conftest import SHARED_DATA, lines, run_script


def zipf_lines(n_lines=3000, n_types=400, seed=0):
    rng = random.Random(seed)
    types = [f"t{i}" for i in range(n_types)]
    weights = [1 / (i + 1) for i in range(n_types)]
    return [" ".join(rng.choices(types, weights, k=rng.randint(1, 15))) for _ in range(n_lines)]


def diff_positions(clean, noisy):
    """[(clean token, noisy token)] at every position; asserts the lines align token by token."""
    pairs = []
    assert len(clean) == len(noisy)
    for a, b in zip(clean, noisy):
        a, b = a.split(), b.split()
        assert len(a) == len(b)
        pairs += list(zip(a, b))
    return pairs


@pytest.mark.parametrize("mode", noise.MODES)
def test_rate_alignment_and_substitution(mode):
    clean = zipf_lines()
    noisy, record = noise.corrupt_lines(clean, 0.2, mode, seed=3)
    pairs = diff_positions(clean, noisy)
    changed = sum(a != b for a, b in pairs)
    n = len(pairs)
    assert record["tokens"] == n and record["replaced"] == changed  # a replacement is never the same type
    assert record["measured_fraction"] == changed / n
    assert abs(changed / n - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    vocab = {t for line in clean for t in line.split()}
    assert {b for _, b in pairs} <= vocab
    assert record["mode"] == mode and record["rate"] == 0.2 and record["seed"] == 3


def test_reproducible_from_the_seed():
    clean = zipf_lines(500)
    assert noise.corrupt_lines(clean, 0.3, "by-class", 7) == noise.corrupt_lines(clean, 0.3, "by-class", 7)
    assert noise.corrupt_lines(clean, 0.3, "by-class", 7)[0] != noise.corrupt_lines(clean, 0.3, "by-class", 8)[0]


def test_by_class_ramp_has_the_mean_rate_and_rises_with_rank():
    counts = sorted((int(1000 / (i + 1)) + 1 for i in range(300)), reverse=True)
    rates, k, beta = noise.by_class_rates(counts, 0.2)
    n = np.asarray(counts, dtype=float)
    assert k == 0.1 and beta > 0
    assert (n * rates).sum() / n.sum() == pytest.approx(0.2, abs=1e-9)
    assert rates[0] == pytest.approx(0.1) and (np.diff(rates) >= 0).all() and rates.max() <= 1.0
    unclipped = rates < 1.0
    assert np.allclose(rates[unclipped], k + beta * np.arange(len(counts))[unclipped])
    with pytest.raises(PrepError, match="cannot reach a mean of 0.95"):
        noise.by_class_rates([100, 1], 0.95)


def test_by_class_corrupts_rare_types_more():
    clean = zipf_lines(4000)
    pairs = diff_positions(clean, noise.corrupt_lines(clean, 0.2, "by-class", 1)[0])
    freq = Counter(a for a, _ in pairs)
    ranked = [t for t, _ in freq.most_common()]
    top, rest = set(ranked[:10]), set(ranked[10:])
    rate = {name: sum(a != b for a, b in pairs if a in group) / sum(1 for a, _ in pairs if a in group)
            for name, group in (("top", top), ("rest", rest))}
    assert rate["top"] < 0.2 < rate["rest"]


def test_bad_flags(capsys):
    for argv, message in ((["--target-noise", "1.5"], "--target-noise must be in [0, 1), got 1.5"),
                          (["--target-noise", "0.1", "--target-noise-seed", "-2"], "--target-noise-seed must be >= 0, got -2")):
        with pytest.raises(SystemExit) as exit_:
            multi30k.parse_args(argv)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"prepare-multi30k.sh: error: {message}"


def test_prepare_multi30k_with_noise_keeps_valid_and_test_clean(multi30k_raw, multi30k_prepared, tmp_path):
    out = tmp_path / "out"
    run_script("prepare-multi30k.sh", "--raw-dir", multi30k_raw[0], "--out", out, "--vocab", "60",
               "--test-sets", "test_2016_flickr,test_2017_flickr", "--workers", "2",
               "--target-noise", "0.2", "--target-noise-mode", "by-class", "--target-noise-seed", "5")
    clean_out = multi30k_prepared[0]
    text, clean_text = out / "multi30k.de-en", clean_out / "multi30k.de-en"
    for name in ("train.de", "valid.de", "valid.en", "test.en", "test1.en"):
        assert (text / name).read_bytes() == (clean_text / name).read_bytes(), name
    assert (text / "train.clean.en").read_bytes() == (clean_text / "train.en").read_bytes()
    pairs = diff_positions(lines(text / "train.clean.en"), lines(text / "train.en"))
    record = json.loads((out / "data-bin" / "multi30k.de-en" / "prepare.json").read_text())["target_noise"]
    assert record["mode"] == "by-class" and record["rate"] == 0.2 and record["seed"] == 5
    assert record["tokens"] == len(pairs) and record["replaced"] == sum(a != b for a, b in pairs) > 0
    assert record["measured_fraction"] == pytest.approx(record["replaced"] / len(pairs))
    assert "target_noise" not in json.loads((clean_out / "data-bin" / "multi30k.de-en" / "prepare.json").read_text())


@pytest.mark.skipif(not (SHARED_DATA / "multi30k" / "train.en.gz").exists(),
                    reason="../shared/data/multi30k/train.en.gz is not present")
def test_by_class_noise_on_the_multi30k_training_targets():
    """On the real English side (whitespace words, a Zipfian vocabulary of ~10k types) the ramp
    reaches its mean and the measured fraction is 20 %."""
    with gzip.open(SHARED_DATA / "multi30k" / "train.en.gz", "rt", encoding="utf-8") as f:
        clean = [line.lower().rstrip("\n") for line in f]
    noisy, record = noise.corrupt_lines(clean, 0.2, "by-class", 1)
    assert record["types"] > 5000 and record["tokens"] > 300000
    assert abs(record["measured_fraction"] - 0.2) < 0.005
    assert 0 < record["beta"] and record["k"] == 0.1
    assert noisy == noise.corrupt_lines(clean, 0.2, "by-class", 1)[0]
