"""The report's PNG figures: Fig. 5 (t-SNE of item features), Fig. 6 (losses in training, user-AUC over lambda0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tsne(points: dict[str, np.ndarray], model_name: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for name, xy in points.items():
        ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.7, label=name)
    ax.set(title=f"{model_name}: t-SNE of {len(next(iter(points.values())))} items' features", xticks=[], yticks=[])
    ax.legend(markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_losses(log_rows: list[dict], model_name: str, path: Path) -> None:
    """Total loss (eq. 10) and the adversarial loss L_ADV per logged interval, with lambda on a second axis."""
    if not log_rows:
        raise ValueError(f"{model_name}'s training log has no rows")
    plt = _pyplot()
    steps = [row["step"] for row in log_rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(steps, [row["loss_total"] for row in log_rows], label="total loss")
    ax.plot(steps, [row["loss_adv"] for row in log_rows], label="adversarial loss")
    ax.set(xlabel="training step", ylabel="mean loss over the logged interval",
           title=f"{model_name}: losses in training")
    weight_axis = ax.twinx()
    weight_axis.plot(steps, [row["lambda"] for row in log_rows], color="grey", linestyle=":", label="lambda")
    weight_axis.set_ylabel("adversarial weight lambda")
    lines = ax.get_lines() + weight_axis.get_lines()
    ax.legend(lines, [line.get_label() for line in lines])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lambda0(user_auc: dict[float, float], path: Path) -> None:
    """User-AUC over lambda0 on a log axis (symlog when lambda0 = 0 is among them), ticks at the values run."""
    plt = _pyplot()
    values = sorted(user_auc)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(values, [user_auc[v] for v in values], marker="o")
    positive = [v for v in values if v > 0]
    if values[0] > 0:
        ax.set_xscale("log")
    elif positive:  # lambda0 = 0 (no adversarial loss) has no place on a log axis
        ax.set_xscale("symlog", linthresh=positive[0])
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.minorticks_off()
    ax.set(xlabel="lambda0", ylabel="user-AUC", title="MARN: user-AUC over lambda0 (one run each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
