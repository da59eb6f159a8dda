"""Each arm's scores of its users' candidates: a trained model's logits, the true relevance (`oracle`) or random
draws (`random`)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from marn.abtest.experiment import Experiment
from marn.config import BUILTIN_ARMS, DataConfig, Paths
from marn.data.dataset import CTRDataset, load_split
from marn.data.formats import SAMPLE_DTYPE
from marn.data.item_table import load_item_table
from marn.models.persistence import load_model, model_file

log = logging.getLogger(__name__)


@torch.inference_mode()
def score_candidates(model, dataset: CTRDataset, users: np.ndarray, positions: np.ndarray, items: np.ndarray,
                     batch_size: int) -> np.ndarray:
    """The model's logit of each (prepared user, history length, candidate item): `dataset`'s histories with the
    candidates as the targets."""
    samples = np.zeros(len(users), dtype=SAMPLE_DTYPE)
    samples["user"], samples["pos"], samples["item"] = users, positions, items
    candidates = dataset.with_samples(samples)
    model.eval()
    logits = np.empty(len(users))
    for start in range(0, len(users), batch_size):
        stop = min(start + batch_size, len(users))
        logits[start:stop] = model(candidates.__getitems__(list(range(start, stop))))["logit"].double().numpy()
    return logits


def score_arms(experiment: Experiment, user_arm: np.ndarray, arms: list[str], data: DataConfig, paths: Paths,
               batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """[R, M] each request's candidates scored by the arm serving its user; a model scores only the
    distinct (user, item) pairs of its own users, `batch_size` at a time."""
    requests = experiment.requests
    scores = np.empty(requests.candidates.shape)
    request_arm = user_arm[requests.user]
    random_scores = rng.random(scores.shape)
    if any(name not in BUILTIN_ARMS for name in arms):
        table = load_item_table(paths.prepared, paths.features)
        dataset = load_split(paths.prepared, "test", data)
    population = experiment.population
    for arm, name in enumerate(arms):
        rows = request_arm == arm
        if name == "oracle":
            scores[rows] = requests.relevance[rows]
        elif name == "random":
            scores[rows] = random_scores[rows]
        else:
            model = load_model(model_file(paths.models, name), name, table)
            needed = np.unique(experiment.pair_of_entry[rows])
            pair_logit = np.zeros(len(experiment.pair_user))
            pair_logit[needed] = score_candidates(
                model, dataset, population.user[experiment.pair_user[needed]],
                population.position[experiment.pair_user[needed]], experiment.pair_item[needed], batch_size)
            scores[rows] = pair_logit[experiment.pair_of_entry[rows]]
            log.info("abtest: %s scored %d (user, item) pairs", name, needed.size)
    return scores
