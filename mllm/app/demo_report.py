"""What the demo shows besides its numbers: the blank-image baseline and two figures.

    blank_mmbench_tsv("mmbench_dev.tsv", "mmbench_dev_blank.tsv")   # every image -> its background only
    plot_learning_curves(stage_dirs, t0, "learning_curves.png")     # loss per stage against seconds
    plot_categories(scores, blank_scores, "categories.png")         # circular accuracy per category

The blank baseline is the same model asked the same questions about images of the same sizes that hold
only the background colour (so the prompt and the number of image tokens are unchanged): what it scores
there comes from the text alone (priors, options), and the difference to the real score is what the
image contributed. Figures use matplotlib's non-interactive Agg backend.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

_REFERENCE_LEN = 64  # an MMBench image cell this short is another row's index, not image data


def blank_image_b64(cell: str) -> str:
    """A base64 PNG of the same size as the image in ``cell``, filled with its most common colour."""
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(cell))).convert("RGB")
    colours = img.getcolors(maxcolors=img.width * img.height) or [(1, (255, 255, 255))]
    background = max(colours)[1]
    buf = io.BytesIO()
    Image.new("RGB", img.size, background).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def blank_mmbench_tsv(src: str, dst: str) -> int:
    """Copy an MMBench TSV with every image replaced by a blank one; returns the number of images blanked.
    References to another row's image (short cells) are kept, so they point at that row's blank."""
    csv.field_size_limit(1 << 30)
    n = 0
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or "image" not in rows[0]:
        raise ValueError(f"{src}: not an MMBench TSV (no 'image' column in the header)")
    col = rows[0].index("image")
    for r in rows[1:]:
        if col < len(r) and len(r[col]) > _REFERENCE_LEN:
            r[col] = blank_image_b64(r[col])
            n += 1
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(dst, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows(rows)
    return n


def read_loss_curve(stage_dir: str) -> List[Tuple[float, float]]:
    """(wall-clock time, loss) of every logged training step in a stage's ``metrics.jsonl``."""
    path = os.path.join(stage_dir, "metrics.jsonl")
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec and "time" in rec:
                out.append((float(rec["time"]), float(rec["loss"])))
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(curves: Mapping[str, Sequence[Tuple[float, float]]], t0: float, path: str) -> str:
    """One line per stage: training loss against seconds since ``t0`` (the demo's start)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, pts in curves.items():
        if pts:
            ax.plot([t - t0 for t, _ in pts], [v for _, v in pts], label=name, linewidth=1.2)
    ax.set_xlabel("seconds since the demo started")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title("Tiny default: loss per training step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def category_rows(scores: Mapping, blank: Optional[Mapping]) -> List[Tuple[str, float, Optional[float]]]:
    """(name, circular accuracy, blank-image circular accuracy) for Overall, the L2 groups and categories."""
    ours = scores["circular"]
    theirs = (blank or {}).get("circular", {})
    return [(k, float(v), (float(theirs[k]) if k in theirs else None)) for k, v in ours.items()]


def plot_categories(scores: Mapping, blank: Optional[Mapping], path: str) -> str:
    plt = _plt()
    rows = category_rows(scores, blank)
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    y = list(range(len(rows)))[::-1]
    ax.barh([v + 0.2 for v in y], [r[1] for r in rows], height=0.4, label="trained model", color="tab:blue")
    if blank:
        ax.barh([v - 0.2 for v in y], [r[2] or 0.0 for r in rows], height=0.4, label="same model, blank images",
                color="tab:gray")
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("MMBench circular accuracy (held-out Shapes DEV)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

