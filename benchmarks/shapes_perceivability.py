"""The perceivability ladder of the Shapes world: one lever at a time, held-out accuracy against chance.

    python benchmarks/shapes_perceivability.py --rungs pixels,random,privileged --steps 300
    python benchmarks/shapes_perceivability.py --rungs pretrained,contrastive --train-images 600 --epochs 4
    python benchmarks/shapes_perceivability.py --rungs privileged --large 2 --small 1.25   # shape sizes
    python benchmarks/shapes_perceivability.py --rungs pretrained --train-images 1000 --epochs 6 \
        --enc-batch 16 --enc-lr 6e-3                       # encoder recipe, frozen features

Every rung is ``eval.perceivability.run_probe`` on the same 200 held-out scenes (open answers, exact
match, per MMBench category): raw patch pixels, a frozen random tower, the tower trained on the scene
metadata ("privileged"), and the frozen features of ``train_stages.encoder_pretrain`` with and without
its attribute heads. ``--large/--small`` set the world's shape sides in canvas patches, ``--feature-layer``
the tower layer the features come from. Prints one JSON line per rung (overall and per-category accuracy,
per-cell accuracies, seconds).

Measured on 2 shared cores, one thread per run, load average ~10 (seconds are ~3x an idle machine's):

| rung | setting | all | colour | kind | size | text | seconds |
|---|---|---|---|---|---|---|---|
| truth | true cell metadata through the same readout | 1.00 | 1 | 1 | 1 | 1 | - |
| pixels | raw 8x8 patches, linear | 0.31 | 0.92 | 0.37 | 0.65 | 0.13 | 35 |
| random | frozen random tower, linear | 0.33 | 0.90 | 0.40 | 0.67 | 0.07 | 36 |
| privileged | 300 steps of 8 scenes, lr 2e-3 | 0.40 | 1.00 | 0.41 | 0.78 | 0.10 | 280 |
| privileged | 300 steps, lr 6e-3 | 0.45 | 1.00 | 0.47 | 0.78 | 0.19 | 238 |
| privileged | 300 steps, feature layer -1 instead of -2 | 0.40 | 0.99 | 0.42 | 0.77 | 0.12 | 320 |
| privileged | 300 steps, smaller shapes (2 / 1.25 patches) | 0.25 | 0.92 | 0.24 | 0.80 | 0.16 | 278 |
| privileged | 1200 steps, lr 2e-3 | 0.59 | 1.00 | 0.63 | 0.87 | 0.43 | 572 |
| contrastive | encoder pretraining, captions only (600 images, 4 epochs) | 0.25 | 0.91 | 0.32 | 0.66 | 0.07 | 78 |
| pretrained | + attribute heads (same data and steps) | 0.41 | 0.97 | 0.44 | 0.73 | 0.09 | 161 |

Cell accuracies (not question categories), load average ~5, probe on 1600 fixed scenes:

| rung | setting | all | colour | kind | size | text | pretrain s |
|---|---|---|---|---|---|---|---|
| pretrained | 1000 images x 6 epochs, batch 64, lr 2e-3 | 0.40 | 1.00 | 0.43 | 0.77 | 0.16 | 62 |
| pretrained | 1000 images x 6 epochs, batch 16, lr 6e-3 (the default now) | 0.49 | 0.99 | 0.51 | 0.80 | 0.25 | 61 |
| privileged | 5000 steps of 8 fresh scenes, lr 6e-3, per-patch heads | 0.99 | 1.00 | 1.00 | 0.99 | 0.87 | (477 total) |
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rungs", default="pixels,random,privileged,contrastive,pretrained")
    p.add_argument("--steps", type=int, default=300, help="probe steps")
    p.add_argument("--lr", type=float, help="privileged probe lr (default: run_probe's)")
    p.add_argument("--large", type=float, help="large shape side in canvas patches")
    p.add_argument("--small", type=float, help="small shape side in canvas patches")
    p.add_argument("--feature-layer", type=int, help="tower layer the features come from")
    p.add_argument("--train-images", type=int, default=600, help="world size for encoder pretraining")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--enc-batch", type=int, default=32, help="encoder pretraining batch (images)")
    p.add_argument("--enc-lr", type=float, default=2e-3, help="encoder pretraining lr")
    p.add_argument("--patch-weight", type=float, default=0.0, help="privileged probe: per-patch supervision")
    p.add_argument("--probe-scenes", type=int, default=1600, help="frozen probe: fixed training scenes")
    p.add_argument("--out", help="work directory (default: a temporary one)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)

    import data_pipelines.shapes.scene as scene
    import mllm.presets as presets
    from eval.perceivability import run_probe

    if a.large:
        scene.LARGE_PATCHES = a.large
    if a.small:
        scene.SMALL_PATCHES = a.small
    if a.feature_layer is not None:
        base = presets.get_preset

        def with_layer(name):
            cfg = base(name)
            cfg.vision.feature_layer = a.feature_layer
            return cfg
        presets.get_preset = with_layer

    work = a.out or tempfile.mkdtemp(prefix="perceivability-")
    for rung in a.rungs.split(","):
        extra = {}
        if rung == "pixels":
            r = run_probe("pixels", steps=a.steps, progress=False)
        elif rung == "random":
            r = run_probe("frozen", tower="random", steps=a.steps, progress=False)
        elif rung == "privileged":
            r = run_probe("train", steps=a.steps, lr=a.lr, progress=False, patch_weight=a.patch_weight)
        elif rung in ("contrastive", "pretrained"):
            from data_pipelines.shapes import make_shapes
            from train_stages.encoder_pretrain import EncoderPretrainConfig, pretrain_encoder

            world = os.path.join(work, "world")
            if not os.path.exists(os.path.join(world, "manifest.json")):
                make_shapes(world, seed=0, n_train=a.train_images, n_test=2, overwrite=True)
            enc = os.path.join(work, rung)
            extra = pretrain_encoder(EncoderPretrainConfig(
                data=os.path.join(world, "captions_train.json"), output_dir=enc, epochs=a.epochs, batch_size=a.enc_batch,
                learning_rate=a.enc_lr,
                attribute_weight=0.0 if rung == "contrastive" else 1.0), progress=False)
            r = run_probe("frozen", tower=enc, steps=a.steps, n_train=a.probe_scenes, progress=False)
        else:
            raise SystemExit(f"unknown rung {rung!r}")
        print(json.dumps({"rung": rung, "all": r["accuracy"]["all"], "cells": r["cell_accuracy"],
                          "seconds": r["seconds"], "pretrain_seconds": extra.get("seconds"),
                          "accuracy": r["accuracy"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
