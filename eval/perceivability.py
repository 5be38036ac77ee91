"""Perceivability of the Shapes world at the tiny model's input: can the tower's features answer every
MMBench question category of held-out images?

    # privileged: a random tiny tower trained on the scenes' metadata (what the world allows); the full
    # check (every category >= 0.95 held-out, ~8 min on one loaded core; see the table below)
    python -m eval.perceivability --features train --steps 6000 --patch-weight 1 --unlabelled-keep 0.25
    # frozen features of a pretrained tower (what the connector and the LLM will get)
    python -m eval.perceivability --features frozen --tower runs/encoder
    python -m eval.perceivability --features frozen --tower random     # the same probe on a random tower
    python -m eval.perceivability --features pixels                     # raw patch pixels, linear

The probe: the tower's selected features of every tile (the features the connector sees) are mean-pooled
per cell of the image's layout, separately over the high-resolution tiles and the base view, and one
linear head per attribute (colour, kind, size class, label text; targets from
``data_pipelines.shapes.patches``) reads each cell. The cell predictions are a predicted scene; the
question's own rule (which shape is named, which relation is asked) is applied to it, and the *open*
answer must equal the true one exactly (stricter than picking among 2-4 options). Accuracy is reported per
MMBench category and l2-category, over every multiple-choice question ``tasks.image_questions`` asks of
each held-out scene. Held-out scenes come from their own random stream (never a training scene).

Privileged training: ``--patch-weight`` adds per-patch heads on the patch targets (dense supervision:
every patch says what covers it), ``--unlabelled-keep`` thins out unlabelled training scenes so that the
42 label classes are seen more often (held-out scenes keep the world's mix). The tower learns per step:
the figures are set by the number of steps, not by the world (one loaded core, load average ~5):

| steps | lr | patch heads | labelled share | all | kind (cells) | text (cells) | lowest category | seconds |
|---|---|---|---|---|---|---|---|---|
| 600 | 6e-3 | - | 0.35 | 0.53 | 0.55 | 0.44 | attribute_comparison 0.27 | 33 |
| 1500 | 6e-3 | - | 0.35 | 0.68 | 0.73 | 0.56 | image_topic 0.47 | 98 |
| 1500 | 6e-3 | 1 | 0.35 | 0.74 | 0.78 | 0.68 | image_topic 0.57 | 204 |
| 3000 | 2e-3 | - | 0.35 | 0.85 | 0.88 | 0.59 | ocr 0.59 | 313 |
| 5000 | 6e-3 | 1 | 0.35 | 0.99 | 1.00 | 0.87 | ocr 0.87 | 477 |
| 6000 | 6e-3 | 1 | 0.71 | 0.995 | 1.00 | 0.99 | attribute_comparison 0.97 (ocr 0.985) | 435 |
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from data_pipelines.image_processor import AnyResImageProcessor
from data_pipelines.shapes.patches import (HEADS, TEXTS, PatchHeads, cell_assignment, cell_targets, layout_cells,
                                           patch_targets, pool_cells)
from data_pipelines.shapes.render import render_scene
from data_pipelines.shapes.scene import (COLOURS, KINDS, REGIONS, SIZES, Scene, cell_rect, label_places_of,
                                         layout_of, positions_of, sample_scene, scene_rng)
from data_pipelines.shapes.tasks import L2_OF, image_questions, join_words, article
from mllm.model import MultimodalLM
from mllm.presets import get_preset

# ---- data ---------------------------------------------------------------------------------------------
def make_batch(scenes: Sequence[Scene], processor, patch: int, patches: Optional[Dict[str, list]] = None):
    """Tiles of the scenes (sum T, 3, S, S), per-cell targets {head: (cells,)}, the patch -> cell ids
    (sum T, G*G) with every scene's cells numbered after the previous scene's, and cells per scene.
    ``patches`` (a dict of lists) also collects the per-patch targets {head: [(T, G*G)]}."""
    tiles, targets, assign, n_cells, offset = [], {k: [] for k in HEADS}, [], [], 0
    for sc in scenes:
        if patches is not None:
            pt = patch_targets(sc, processor, patch)
            for k in HEADS:
                patches.setdefault(k, []).append(pt[k])
        t, _ = processor.process(render_scene(sc))
        y = cell_targets(sc)
        a = cell_assignment(sc, processor, patch)
        tiles.append(t)
        assign.append(torch.where(a >= 0, a + 2 * offset, -1))
        n = len(layout_cells(sc))
        n_cells.append(n)
        offset += n
        for k in HEADS:
            targets[k].append(y[k])
    return torch.cat(tiles), {k: torch.cat(v) for k, v in targets.items()}, torch.cat(assign), n_cells


def scenes_of(seed: int, split: str, n: int, start: int = 0) -> List[Scene]:
    return [sample_scene(scene_rng(seed, split, i), f"{split}_{i}", split, "") for i in range(start, start + n)]


def labelled_stream(seed: int, split: str, unlabelled_keep: float):
    """Scenes of ``split`` in order, keeping every scene with a label and each unlabelled one with
    probability ``unlabelled_keep`` (1: the world's own mix). Labels are in about a third of the scenes
    and have 42 classes; a privileged probe sees them more often this way (held-out scenes are not
    filtered)."""
    keep, i = scene_rng(seed, split, -1, "keep"), 0
    while True:
        sc = sample_scene(scene_rng(seed, split, i), f"{split}_{i}", split, "")
        i += 1
        if sc.label is not None or keep.random() < unlabelled_keep:
            yield sc


def pixel_features(tiles: torch.Tensor, patch: int) -> torch.Tensor:
    """Raw pixels as features: (N, 3, S, S) -> (N, G*G, 3*patch*patch) in the tower's patch order."""
    n, c, s, _ = tiles.shape
    g = s // patch
    x = tiles.reshape(n, c, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, g * g, c * patch * patch)


# ---- reading a scene back from cell predictions --------------------------------------------------------
def read_scene(scene: Scene, preds: Dict[str, torch.Tensor]):
    """Predicted (shapes, label text) of one scene from its per-cell predictions {head: (cells,)}:
    shapes as {position: (colour, kind, size)}; the label is the most text-like cell's text."""
    cells = layout_cells(scene)
    positions = set(positions_of(scene.width, scene.height))
    shapes, text = {}, None
    for i, cell in enumerate(cells):
        colour, kind, size = (int(preds[k][i]) for k in ("colour", "kind", "size"))
        if cell in positions and colour > 0 and kind > 0:
            shapes[cell] = (list(COLOURS)[colour - 1], KINDS[kind - 1], SIZES[max(size, 1) - 1])
        if int(preds["text"][i]) > 0 and text is None:
            text = TEXTS[int(preds["text"][i]) - 1]
    return shapes, text


def _cell_centre(scene: Scene, pos: str) -> Tuple[float, float]:
    x0, y0, x1, y1 = cell_rect(scene.width, scene.height, pos)
    return (x0 + x1) / 2, (y0 + y1) / 2


def answer(question, scene: Scene, shapes: Dict[str, Tuple[str, str, str]], text: Optional[str]) -> Optional[str]:
    """The open answer to ``question`` (a tasks.Question) read from a predicted scene, or None."""
    names = {f"{c} {k}": pos for pos, (c, k, _) in shapes.items()}
    q, t = question.question, question.type

    def named(name):
        return shapes.get(names.get(name))

    if t == "colour":
        kind = re.fullmatch(r"What colour is the (\w+)\?", q)[1]
        hits = [c for c, k, _ in shapes.values() if k == kind]
        return hits[0] if hits else None
    if t == "shape":
        colour = re.fullmatch(r"What shape is the (\w+) object\?", q)[1]
        hits = [k for c, k, _ in shapes.values() if c == colour]
        return hits[0] if hits else None
    if t == "size":
        s = named(re.fullmatch(r"Is the (\w+ \w+) large or small\?", q)[1])
        return s[2] if s else None
    if t == "position":
        return names.get(re.fullmatch(r"Where is the (\w+ \w+) in the image\?", q)[1])
    if t == "bigger":
        a, b = re.fullmatch(r"Which is bigger, the (\w+ \w+) or the (\w+ \w+)\?", q).groups()
        sa, sb = named(a), named(b)
        if not sa or not sb or sa[2] == sb[2]:
            return None
        return a if sa[2] == "large" else b
    if t == "relative":
        a, b = re.fullmatch(r"Where is the (\w+ \w+) relative to the (\w+ \w+)\?", q).groups()
        if a not in names or b not in names:
            return None
        (ra, ca), (rb, cb) = REGIONS[names[a]], REGIONS[names[b]]
        if ra == rb and ca != cb:
            return "left" if ca < cb else "right"
        if ca == cb and ra != rb:
            return "above" if ra < rb else "below"
        return None
    if t == "ocr":
        return text
    if t == "roll":
        colour = re.fullmatch(r"Could the (\w+) shape roll like a wheel\?", q)[1]
        hits = [k for c, k, _ in shapes.values() if c == colour]
        return None if not hits else ("yes" if hits[0] == "circle" else "no")
    if t == "nearest":
        a = re.fullmatch(r"Which shape is closest to the (\w+ \w+)\?", q)[1]
        if a not in names:
            return None
        ca = _cell_centre(scene, names[a])
        others = sorted((math.dist(ca, _cell_centre(scene, p)), n) for n, p in names.items() if n != a)
        return others[0][1] if others else None
    if t == "removal":
        return str(len(shapes) - 1)
    if t == "topic":
        if not shapes:
            return None
        order = sorted(shapes, key=lambda p: REGIONS[p])
        return join_words([article(f"{shapes[p][0]} {shapes[p][1]}") for p in order])
    return None


# ---- scoring ------------------------------------------------------------------------------------------
@torch.no_grad()
def score(features_fn, heads: PatchHeads, scenes: Sequence[Scene], processor, patch: int, seed: int,
          batch: int = 16) -> Dict[str, object]:
    """Per-category / per-l2 accuracy of the probe's open answers, plus per-cell accuracies."""
    right, total = Counter(), Counter()
    cell_hits, cell_n = Counter(), Counter()
    for i in range(0, len(scenes), batch):
        chunk = scenes[i:i + batch]
        tiles, targets, assign, n_cells = make_batch(chunk, processor, patch)
        pooled = pool_cells(features_fn(tiles), assign, sum(n_cells))
        preds = {k: v.argmax(-1) for k, v in heads(pooled).items()}  # (cells,)
        for k in HEADS:
            fg = targets[k] > 0
            cell_hits[k] += int((preds[k] == targets[k])[fg].sum())
            cell_n[k] += int(fg.sum())
        cell_hits["empty"] += int(((preds["colour"] == 0) & (targets["colour"] == 0)).sum())
        cell_n["empty"] += int((targets["colour"] == 0).sum())
        grid = torch.cat([torch.full((n,), layout_of(sc.width, sc.height) == "grid") for sc, n in zip(chunk, n_cells)])
        for lay, where in (("grid", grid), ("line", ~grid)):  # kind per layout: grid cells straddle tiles
            fg = (targets["kind"] > 0) & where
            cell_hits["kind:" + lay] += int((preds["kind"] == targets["kind"])[fg].sum())
            cell_n["kind:" + lay] += int(fg.sum())
        start = 0
        for j, (sc, n) in enumerate(zip(chunk, n_cells)):
            shapes, text = read_scene(sc, {k: v[start:start + n] for k, v in preds.items()})
            start += n
            for q in image_questions(sc, scene_rng(seed, "perceive-q", i + j)):
                if not q.is_mc:
                    continue
                ok = answer(q, sc, shapes, text) == q.answer
                for key in (q.category, "l2:" + L2_OF[q.category], "all"):
                    right[key] += ok
                    total[key] += 1
    acc = {k: round(right[k] / total[k], 4) for k in sorted(total)}
    return {"accuracy": acc, "questions": dict(sorted(total.items())),
            "cell_accuracy": {k: round(cell_hits[k] / max(1, cell_n[k]), 4) for k in cell_n}}


# ---- the probe ----------------------------------------------------------------------------------------
def _tower_and_processor(tower: str, seed: int):
    torch.manual_seed(seed)
    if tower in ("random", "train"):
        model = MultimodalLM.build(get_preset("tiny"))
    else:
        model = MultimodalLM.from_pretrained(tower)
    processor = AnyResImageProcessor.from_config(model.config, num_threads=1)
    return model.vision_tower, processor, model.config.vision.config["patch_size"]


def run_probe(features: str = "train", tower: str = "random", steps: int = 600, batch: int = 8,
              lr: Optional[float] = None, n_train: int = 1600, n_test: int = 200, seed: int = 0,
              progress: bool = True, patch_weight: float = 0.0, unlabelled_keep: float = 1.0) -> Dict[str, object]:
    """Train the probe and score it on held-out scenes. ``features``: "train" (a random tower trained
    with the heads on the metadata, online scenes), "frozen" (``tower``'s features fixed: a path, or
    "random"), or "pixels" (raw patch pixels). Returns the scores with the seconds spent."""
    if features not in ("train", "frozen", "pixels"):
        raise ValueError(f"perceivability: features must be train, frozen or pixels, got {features!r}")
    t0 = time.time()
    vt, processor, patch = _tower_and_processor("random" if features == "train" else tower, seed)
    torch.manual_seed(seed)
    dim = 3 * patch * patch if features == "pixels" else vt.hidden_size * len(getattr(vt, "feature_layers", [0]))
    heads = PatchHeads(2 * dim)  # on [grid mean, base mean] of each cell
    patch_heads = PatchHeads(dim)  # features=train with patch_weight > 0: every patch predicts what covers it
    test = scenes_of(seed, "perceive-test", n_test)
    if features == "train":
        vt.train()
        for p in vt.parameters():
            p.requires_grad_(True)
        params = list(vt.parameters()) + list(heads.parameters())
        if patch_weight > 0:
            params += list(patch_heads.parameters())
        feats_fn = vt
        lr = lr or 6e-3  # 300 steps: all 0.45 at 6e-3 against 0.40 at 2e-3
    else:
        vt.eval()
        for p in vt.parameters():
            p.requires_grad_(False)
        params = list(heads.parameters())
        feats_fn = (lambda x: pixel_features(x, patch)) if features == "pixels" else vt
        lr = lr or 1e-2
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    if features != "train":  # fixed features: pool them once for a fixed training set
        with torch.no_grad():
            pooled, targets = [], {k: [] for k in HEADS}
            train = scenes_of(seed, "perceive-train", n_train)
            for i in range(0, n_train, 32):
                tiles, y, assign, n_cells = make_batch(train[i:i + 32], processor, patch)
                pooled.append(pool_cells(feats_fn(tiles), assign, sum(n_cells)))
                for k in HEADS:
                    targets[k].append(y[k])
            cached, targets = torch.cat(pooled), {k: torch.cat(v) for k, v in targets.items()}
    g = torch.Generator().manual_seed(seed)
    stream = labelled_stream(seed, "perceive-train", unlabelled_keep)
    bar = tqdm(range(steps), desc=f"perceivability probe ({features})", disable=not progress)
    for step in bar:
        if features == "train":
            per_patch = {} if patch_weight > 0 else None
            tiles, y, assign, n_cells = make_batch([next(stream) for _ in range(batch)],
                                                   processor, patch, per_patch)
            feats = vt(tiles)
            loss = heads.loss(pool_cells(feats, assign, sum(n_cells)), y)
            if per_patch:
                loss = loss + patch_weight * patch_heads.loss(feats, {k: torch.cat(v) for k, v in per_patch.items()})
        else:
            idx = torch.randint(0, cached.shape[0], (256,), generator=g)
            loss = heads.loss(cached[idx], {k: v[idx] for k, v in targets.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.time() - t0
    vt.eval()
    out = score(feats_fn, heads, test, processor, patch, seed)
    out.update(features=features, tower=tower, steps=steps, train_seconds=round(train_s, 1),
               seconds=round(time.time() - t0, 1))
    return out


def format_table(result: Dict[str, object]) -> str:
    acc, n = result["accuracy"], result["questions"]
    lines = [f"{'category':48s} {'acc':>6s} {'n':>5s}"]
    lines += [f"{k:48s} {acc[k]:6.3f} {n[k]:5d}" for k in acc]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", choices=("train", "frozen", "pixels"), default="train")
    p.add_argument("--tower", default="random", help="checkpoint dir of a tiny model, or 'random'")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8, help="scenes per step (features=train)")
    p.add_argument("--lr", type=float)
    p.add_argument("--unlabelled-keep", type=float, default=1.0,
                   help="features=train: share of unlabelled training scenes kept (more label examples)")
    p.add_argument("--patch-weight", type=float, default=0.0,
                   help="features=train: weight of per-patch heads on the patch targets (dense supervision)")
    p.add_argument("--train-scenes", type=int, default=1600, help="fixed training scenes (frozen/pixels)")
    p.add_argument("--test-scenes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    result = run_probe(a.features, a.tower, a.steps, a.batch, a.lr, a.train_scenes, a.test_scenes, a.seed,
                       progress=not a.quiet, patch_weight=a.patch_weight,
                       unlabelled_keep=a.unlabelled_keep)
    print(format_table(result))
    print(json.dumps({k: v for k, v in result.items() if k not in ("accuracy", "questions")}))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
