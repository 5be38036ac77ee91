"""Pictures of a generation run: the sample grid with each prompt and the checker's verdict, and the loss curve.

    from eval.gen.plots import save_sample_grid, save_loss_curve
    save_sample_grid(images, prompts, verdicts, "generation_samples.png")   # images (N, 3, H, W) in [0, 1]
    save_loss_curve("runs/gen/metrics.jsonl", "generation_loss.png")       # the stage's logged loss vs step

Verdicts are ``eval.gen.checker.verdict`` strings: "ok" is drawn in green, anything else (what failed) in red.
matplotlib runs on its non-interactive Agg backend: no display is needed.
"""
from __future__ import annotations

import json
import textwrap
from typing import Any, List, Sequence, Tuple

import numpy as np

from eval.gen.checker import to_uint8_hwc

__all__ = ["save_sample_grid", "save_loss_curve", "read_loss_curve"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_sample_grid(images: Any, prompts: Sequence[str], verdicts: Sequence[str], path: str, cols: int = 8,
                     title: str = "") -> None:
    """One PNG: each image (nearest-neighbour enlarged) with its prompt under it and the verdict below that."""

    n = len(prompts)
    if not (len(images) == n == len(verdicts)) or n == 0:
        raise ValueError(f"save_sample_grid: {len(images)} images, {n} prompts, {len(verdicts)} verdicts")
    plt = _pyplot()
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.9 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(to_uint8_hwc(images[i]), interpolation="nearest")
        ok = verdicts[i] == "ok"
        ax.text(0.5, -0.03, "\n".join(textwrap.wrap(prompts[i], 26)), transform=ax.transAxes, ha="center",
                va="top", fontsize=6.5)
        ax.text(0.5, -0.40, "\n".join(textwrap.wrap(verdicts[i], 26)), transform=ax.transAxes, ha="center",
                va="top", fontsize=6.5, color="#1a7f37" if ok else "#c62828", fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.45 / (rows * 2.9 + 0.4), bottom=0.9 / (rows * 2.9 + 0.4),
                        wspace=0.1, hspace=0.9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_loss_curve(metrics_jsonl: str) -> Tuple[List[int], List[float]]:
    """(steps, losses) of the logged training losses in a stage's metrics.jsonl."""
    steps, losses = [], []
    with open(metrics_jsonl) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec and "step" in rec:
                steps.append(int(rec["step"]))
                losses.append(float(rec["loss"]))
    return steps, losses


def save_loss_curve(metrics_jsonl: str, path: str, title: str = "gen stage: flow-matching loss") -> None:
    steps, losses = read_loss_curve(metrics_jsonl)
    if not steps:
        raise ValueError(f"{metrics_jsonl}: no logged losses to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(steps, losses, lw=1.2, label="logged loss")
    if len(losses) >= 5:  # a running mean shows the trend under the batch noise
        k = max(2, len(losses) // 10)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=2, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
