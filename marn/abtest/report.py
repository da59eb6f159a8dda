"""What the A/B stage writes: the results JSON (which says it is a simulation) and the cumulative lift per day,
as rows and as a plot with each treatment's interval band."""

from __future__ import annotations

import json
from pathlib import Path

from marn.abtest.experiment import Experiment
from marn.abtest.simulation import METRICS
from marn.config import AbtestConfig, Paths
from marn.files import atomic_write_text

SIMULATION_NOTE = ("offline simulation of an online A/B test: no live traffic; users, requests, clicks and "
                   "purchases are simulated from a click model and a relevance model")


def abtest_report(abtest: AbtestConfig, experiment: Experiment, summary: dict) -> dict:
    """The results of `compare_arms` (`summary`) with what the experiment was."""
    return {
        "simulation": SIMULATION_NOTE,
        "relevance": experiment.relevance_report,
        "control": abtest.control,
        "treatments": abtest.treatments,
        "metrics": list(METRICS),
        "interval": f"{abtest.interval}, {abtest.confidence:.0%} two-sided; lift = treatment / control - 1",
        "users": int(len(experiment.population.user)),
        "users_skipped_small_pool": experiment.users_skipped_small_pool,
        "requests": int(len(experiment.requests)),
        "prices_imputed": experiment.prices_imputed,
        **summary,
    }


def write_results(report: dict, daily: list[dict], paths: Paths, confidence: float) -> None:
    """`report` to `paths.abtest_out`, the daily rows to `paths.abtest_daily` and their plot to `paths.abtest_plot`."""
    atomic_write_text(paths.abtest_out, json.dumps(report, indent=2) + "\n")
    atomic_write_text(paths.abtest_daily, json.dumps(daily, indent=1) + "\n")
    paths.abtest_plot.parent.mkdir(parents=True, exist_ok=True)
    plot_cumulative_lift(daily, report["control"], confidence, paths.abtest_plot)


def plot_cumulative_lift(daily: list[dict], control: str, confidence: float, path: Path) -> None:
    """One panel per metric: each treatment's cumulative lift by day with its interval band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.5 * len(METRICS), 4), squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        for arm in dict.fromkeys(r["arm"] for r in daily):
            rows = [r for r in daily if r["arm"] == arm and r["metric"] == metric and r["lift"] is not None]
            if not rows:
                continue
            day = [r["day"] for r in rows]
            line, = ax.plot(day, [100 * r["lift"] for r in rows], marker="o", markersize=3, label=arm)
            banded = [r for r in rows if r["ci_low"] is not None and r["ci_high"] is not None]
            ax.fill_between([r["day"] for r in banded], [100 * r["ci_low"] for r in banded],
                            [100 * r["ci_high"] for r in banded], color=line.get_color(), alpha=0.2)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set(xlabel="day of the simulated test", ylabel=f"cumulative lift vs {control} (%)",
               title=f"{metric} (band: {confidence:.0%} interval)")
        ax.legend()
    fig.suptitle("Simulated A/B test (offline simulation, not live traffic)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
