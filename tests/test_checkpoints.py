import pytest
import torch

from labo_fairseq.checkpoints import average_checkpoints, last_epoch_checkpoints
from tests.toy import run_cli, train


def test_average_of_the_last_epoch_checkpoints(toy_data_bin, tmp_path):
    save_dir = tmp_path / "ckpt"
    train(toy_data_bin, save_dir, ["--criterion", "label_smoothed_cross_entropy"], max_update=24,
          extra=["--max-epoch", "3"], epoch_checkpoints=True)
    paths = last_epoch_checkpoints(save_dir, 2)
    assert [p.name for p in paths] == ["checkpoint2.pt", "checkpoint3.pt"]
    out = average_checkpoints(paths, tmp_path / "avg.pt")
    states = [torch.load(p, weights_only=False)["model"] for p in paths]
    averaged = torch.load(out, weights_only=False)["model"]
    name = "decoder.embed_tokens.weight"
    assert not torch.equal(states[0][name], states[1][name])
    torch.testing.assert_close(averaged[name], (states[0][name] + states[1][name]) / 2)
    proc = run_cli(["fairseq-generate", toy_data_bin, "--path", out, "--cpu", "--beam", "2"])
    assert "BLEU4 = " in proc.stdout
    with pytest.raises(ValueError, match="needs 5 epoch checkpoints"):
        last_epoch_checkpoints(save_dir, 5)
