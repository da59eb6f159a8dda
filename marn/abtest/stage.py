"""Stage `abtest`: an offline simulation of the paper's online A/B test (Table 6), with its glue to the data
and the trained models. It is a simulation, and says so in everything it writes.

- Users and candidates: `marn.abtest.population`; requests: `marn.abtest.experiment`.
- Arms: a salted hash of the user id puts each user in the control or a treatment (`abtest.traffic`).
  An arm is a model of the registry, loaded from `<paths.models>/<model name>/model.pt`, or a built-in arm:
  `oracle` ranks by the true relevance (synthetic data only: the ceiling) and `random` ranks at random
  (the floor). Each arm shows its `slate_size` best-scored candidates (`marn.abtest.scoring`).
- Relevance: `marn.abtest.relevance`; clicks, purchases and GMV: `marn.abtest.simulation`; lifts and
  intervals: `marn.abtest.statistics`.

Writes `paths.abtest_out` (JSON), the daily cumulative lifts `paths.abtest_daily` (JSON rows) and their plot
`paths.abtest_plot` (PNG, each treatment with its interval band).
"""

from __future__ import annotations

import numpy as np

from marn import ops
from marn.abtest.experiment import Experiment, build_experiment, generators
from marn.abtest.report import abtest_report, write_results
from marn.abtest.scoring import score_arms
from marn.abtest.simulation import assign_arms, compare_arms, cumulative_daily_lifts, simulate_responses
from marn.config import BUILTIN_ARMS, AbtestConfig, DataConfig, Params, Paths
from marn.models.persistence import model_file


def assign_users(abtest: AbtestConfig, experiment: Experiment) -> np.ndarray:
    """Arm index of each user by the salted hash; fails when an arm gets fewer than 2 users."""
    arms = abtest.arms
    shares = abtest.traffic or [1.0 / len(arms)] * len(arms)
    user_arm = assign_arms(experiment.population.user_id.tolist(), shares, abtest.salt)
    for name, size in zip(arms, np.bincount(user_arm, minlength=len(arms))):
        if size < 2:
            raise ValueError(f"abtest: arm {name!r} got {size} of the {len(user_arm)} users; an arm needs at least 2 "
                             "(raise abtest.max_users, or change abtest.traffic or abtest.salt)")
    return user_arm


def run_abtest(abtest: AbtestConfig, data: DataConfig, paths: Paths) -> dict:
    """Simulate the A/B test of `abtest` with the ops backend the caller entered and write its results; returns
    what `paths.abtest_out` holds."""
    arms = abtest.arms
    for name in (name for name in arms if name not in BUILTIN_ARMS):
        path = model_file(paths.models, name)
        if not path.is_file():
            raise FileNotFoundError(f"abtest arm {name!r}: {path} not found; train it first (train.models)")
    experiment = build_experiment(abtest, data, paths)
    user_arm = assign_users(abtest, experiment)
    random_arm_rng, simulation_rng, bootstrap_rng = generators(abtest.seed, 1, 3)
    scores = score_arms(experiment, user_arm, arms, data, paths, abtest.batch_size, random_arm_rng)
    requests = experiment.requests
    responses = simulate_responses(requests, scores, abtest.slate_size, abtest.click_model, abtest.position_bias,
                                   abtest.purchase_probability, simulation_rng)
    summary = compare_arms(responses, requests.user, user_arm, arms, abtest.confidence, abtest.power,
                           abtest.interval, bootstrap_rng, abtest.bootstrap_samples)
    daily = cumulative_daily_lifts(responses, requests, user_arm, arms, abtest.confidence)
    report = abtest_report(abtest, experiment, summary)
    write_results(report, daily, paths, abtest.confidence)
    return report


def run(config: Params, paths: Paths) -> dict:
    """The abtest stage."""
    with ops.use_backend(config.ops.backend):
        return run_abtest(config.abtest, config.data, paths)
