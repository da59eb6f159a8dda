"""Training on several ranks: 2 gloo processes on CPU end where 1 process with the same global batch ends,
and a checkpoint resumes on another number of ranks. The 2-rank runs go through `marn.train.run` with
train.nproc = 2, which starts `marn.pipeline train` on torchrun ranks.
"""

from __future__ import annotations

import json

import pytest
import torch

from marn import distributed
from marn.data.dataset import CTRDataset, make_loader
from marn.data.item_table import load_item_table
from marn.models.registry import build_model
from marn.train import local_batch, train_step
from tests.tiny_data import tiny_architecture, write_tiny_dataset
from tests.training_support import Killed, model_weights, stop_optimizer_when, train_tiny

# 320 samples in global batches of 29: parts of 15 and 14, and a last batch of one sample that leaves
# rank 1 an empty part
N_USERS, N_SAMPLES, BATCH = 30, 320, 29
# a model whose every loss is a mean over samples, so the 2-rank run must match exactly
SAMPLE_MEAN_MODEL = "BaseModel+MAF"
RUN = {"epochs": 2, "batch_size": BATCH, "checkpoint_every": 5}
# float32 sums taken in another order (the batch split in two, then gloo's sum), over 24 Adagrad steps: measured
# up to 2e-8 absolute; weighting the parts 15:14 as equals instead moves weights by 6e-5
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data = write_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_users=N_USERS)
    assert len(CTRDataset(data.prepared_dir, "train", 6, 6)) == N_SAMPLES
    return data


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    """The uninterrupted single-process run the 2-rank runs must reproduce."""
    out_dir = tmp_path_factory.mktemp("one")
    return train_tiny(data, out_dir, SAMPLE_MEAN_MODEL, **RUN), out_dir / SAMPLE_MEAN_MODEL


def _assert_same_run(model_dir, expected_dir, metrics, expected_metrics) -> None:
    torch.testing.assert_close(model_weights(model_dir / "model.pt"), model_weights(expected_dir / "model.pt"),
                               **TOLERANCE)
    assert metrics["steps"] == expected_metrics["steps"]
    assert metrics["epoch_loss_ctr"] == pytest.approx(expected_metrics["epoch_loss_ctr"], rel=1e-5)
    rows, expected_rows = (json.loads((d / "train_log.json").read_text()) for d in (model_dir, expected_dir))
    assert [r["step"] for r in rows] == [r["step"] for r in expected_rows]
    assert [r["loss_total"] for r in rows] == pytest.approx([r["loss_total"] for r in expected_rows], rel=1e-5)
    assert not (model_dir / "checkpoint.pt").exists()


def test_shard_gives_each_rank_a_contiguous_part():
    batch = list(range(7))
    assert [distributed.shard(batch, r, 3) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [distributed.shard([9], r, 2) for r in range(2)] == [[9], []]
    with pytest.raises(ValueError, match=r"rank 2 is outside \[0, 2\)"):
        distributed.shard(batch, 2, 2)


def test_empty_part_runs_one_sample_at_zero_share(data):
    dataset = CTRDataset(data.prepared_dir, "train", 6, 6)
    batch, share = local_batch(dataset, [5], distributed.Ranks(1, 2, torch.device("cpu")))
    assert share == 0 and batch.target_item.shape == (1,)


@pytest.mark.slow  # two torchrun processes: about 15 s on 2 busy cores
def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(data, one_process, tmp_path):
    expected_metrics, expected_dir = one_process
    train_tiny(data, tmp_path, SAMPLE_MEAN_MODEL, nproc=2, **RUN)
    metrics = json.loads((tmp_path / SAMPLE_MEAN_MODEL / "train_metrics.json").read_text())
    _assert_same_run(tmp_path / SAMPLE_MEAN_MODEL, expected_dir, metrics, expected_metrics)


@pytest.mark.slow  # two torchrun processes: about 15 s on 2 busy cores
def test_checkpoint_of_one_process_resumes_on_two_ranks(data, one_process, tmp_path, monkeypatch):
    expected_metrics, expected_dir = one_process
    stop_optimizer_when(monkeypatch, lambda steps_done: steps_done == 17)  # in epoch 2, checkpoint at step 15
    with pytest.raises(Killed):
        train_tiny(data, tmp_path, SAMPLE_MEAN_MODEL, **RUN)
    checkpoint = torch.load(tmp_path / SAMPLE_MEAN_MODEL / "checkpoint.pt", weights_only=True)
    assert checkpoint["state"]["samples_seen"] == N_SAMPLES + 3 * BATCH and len(checkpoint["rng_states"]) == 1
    monkeypatch.undo()

    train_tiny(data, tmp_path, SAMPLE_MEAN_MODEL, nproc=2, **RUN)
    metrics = json.loads((tmp_path / SAMPLE_MEAN_MODEL / "train_metrics.json").read_text())
    _assert_same_run(tmp_path / SAMPLE_MEAN_MODEL, expected_dir, metrics, expected_metrics)


def _rank_gradients(model, dataset, global_batch, ranks, weight) -> dict[str, torch.Tensor]:
    """What DDP would hold after one step: each rank's gradient of its part, averaged over the ranks."""
    sums: dict[str, torch.Tensor] = {}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # a step that leaves the weights as they are
    for rank in range(ranks):
        part_ranks = distributed.Ranks(rank, ranks, torch.device("cpu"))
        batch, share = local_batch(dataset, global_batch, part_ranks)
        train_step(model, model, optimizer, batch, share, ranks, weight)
        for name, p in model.named_parameters():
            if p.grad is not None:
                sums[name] = sums.get(name, 0) + p.grad / ranks
    return sums


def test_marn_item_averaged_losses_leave_the_user_side_gradients_exact(data):
    """MARN's discriminator losses average over the distinct items of a rank's part, so 2 ranks cannot
    match 1 process exactly. What holds, for one step from the same weights: every gradient outside the
    discriminators at lambda = 0 (the reversal passes nothing back yet), and the gradients of the layers
    after the item representation (APGRU, attention, MLP), which only the CTR loss reaches, at any lambda."""
    table = load_item_table(data.prepared_dir, data.features_dir)
    dataset = CTRDataset(data.prepared_dir, "train", 6, 6)
    torch.manual_seed(0)
    model = build_model("MARN", table, tiny_architecture()).train()
    global_batch = next(iter(make_loader(dataset, 15, shuffle=True, seed=1).batch_sampler))  # parts of 8 and 7
    user_side = ("sequence.", "behaviour_property.", "candidate_attention.", "prediction.")
    for weight, compared in ((0.0, lambda name: not name.startswith("adversary.")),
                             (0.05, lambda name: name.startswith(user_side))):
        one, two = (_rank_gradients(model, dataset, global_batch, ranks, weight) for ranks in (1, 2))
        exact = {name: g for name, g in one.items() if compared(name)}
        assert exact and any(name.startswith("sequence.") for name in exact)
        torch.testing.assert_close({name: two[name] for name in exact}, exact, rtol=1e-5, atol=1e-7)
    discriminators = [name for name in one if name.startswith("adversary.")]
    assert any(not torch.allclose(one[name], two[name], rtol=1e-3, atol=1e-6) for name in discriminators)
