"""Benchmark: AnyResImageProcessor vs transformers' LlavaNextImageProcessorPil on the same images.

Run from the repository root::

    .venv/bin/python benchmarks/anyres_preprocess.py [--n 200 --tile 336 --batch-size 8 --repeats 3]

A fixed, seeded set of RGB images (noise + filled shapes; sizes from a few pixels to ~1500 px, extreme
aspect ratios included) is preprocessed by both implementations in the same run: one warm-up pass that
also compares every pixel, then ``--repeats`` timed passes in which the two alternate batch by batch (who
goes first alternates too), so machine noise hits both alike. It prints the max abs pixel difference,
images/s of each and the throughput ratio, for our processor both with its default thread pool and with
``num_threads=1`` (transformers is single-threaded). Goal: max diff <= 1e-5 and ratio >= 2.0.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from typing import Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers.models.llava_next.image_processing_pil_llava_next import (  # noqa: E402
    LlavaNextImageProcessorPil)

from data_pipelines.image_processor import AnyResImageProcessor  # noqa: E402

log = logging.getLogger("mllm.bench")


def make_images(n: int, seed: int = 0) -> List[Image.Image]:
    """n seeded RGB images: 15% tiny, 45% medium, 25% large (to ~1500 px), 15% extreme aspect ratios."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.15:
            h, w = rng.integers(1, 65, size=2)
        elif kind < 0.60:
            h, w = rng.integers(64, 801, size=2)
        elif kind < 0.85:
            h, w = rng.integers(800, 1501, size=2)
        else:
            thin, long = int(rng.integers(1, 40)), int(rng.integers(300, 1501))
            h, w = (thin, long) if rng.random() < 0.5 else (long, thin)
        h, w = int(h), int(w)
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        image = Image.fromarray(arr, "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 6))):
            x0, x1 = sorted(rng.integers(0, w, size=2).tolist())
            y0, y1 = sorted(rng.integers(0, h, size=2).tolist())
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        images.append(image)
    return images


def main(argv: List[str] | None = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of images")
    parser.add_argument("--tile", type=int, default=336, help="tile size S")
    parser.add_argument("--batch-size", type=int, default=8, help="images per processor call")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over all images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    S = args.tile
    pins = [[S, 2 * S], [2 * S, S], [2 * S, 2 * S], [3 * S, S], [S, 3 * S]]  # LLaVA-NeXT's, scaled to S
    hf = LlavaNextImageProcessorPil(size={"shortest_edge": S}, crop_size={"height": S, "width": S},
                                    image_grid_pinpoints=pins, do_pad=True)
    ours = {"ours": AnyResImageProcessor(S, pins, hf.image_mean, hf.image_std),
            "ours-1-thread": AnyResImageProcessor(S, pins, hf.image_mean, hf.image_std, num_threads=1)}
    images = make_images(args.n, args.seed)
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    sizes = np.array([im.size for im in images])
    log.info(f"{args.n} images, widths {sizes[:, 0].min()}-{sizes[:, 0].max()}, heights {sizes[:, 1].min()}-"
             f"{sizes[:, 1].max()}; tile {S}, pinpoints {pins}; batches of {args.batch_size}; "
             f"ours uses {ours['ours'].num_threads} threads, torch {torch.get_num_threads()}, "
             f"cpus {os.cpu_count()}")

    # warm-up pass, comparing every pixel
    max_diff, tiles = 0.0, 0
    for batch in tqdm(batches, desc="warm-up + pixel check", leave=False):
        ref = hf(batch, return_tensors="pt")
        for name, proc in ours.items():
            out = proc(batch)
            if out["pixel_values"].shape != ref["pixel_values"].shape:
                raise AssertionError(f"{name}: shape {tuple(out['pixel_values'].shape)} != transformers' "
                                     f"{tuple(ref['pixel_values'].shape)}")
            if not torch.equal(out["image_sizes"], ref["image_sizes"]):
                raise AssertionError(f"{name}: image_sizes differ from transformers'")
            max_diff = max(max_diff, (out["pixel_values"] - ref["pixel_values"]).abs().max().item())
        tiles += int(out["num_tiles"].sum())

    names = ["transformers"] + list(ours)
    calls = {"transformers": lambda b: hf(b, return_tensors="pt"), **{k: v for k, v in ours.items()}}
    totals: Dict[str, List[float]] = {k: [] for k in names}
    for rep in tqdm(range(args.repeats), desc="timed passes", leave=False):
        spent = dict.fromkeys(names, 0.0)
        for j, batch in enumerate(batches):
            order = names if (j + rep) % 2 == 0 else names[::-1]
            for name in order:
                t0 = time.perf_counter()
                calls[name](batch)
                spent[name] += time.perf_counter() - t0
        for name in names:
            totals[name].append(spent[name])

    ips = {name: args.n / statistics.median(totals[name]) for name in names}
    log.info(f"tiles produced: {tiles} ({tiles / args.n:.2f} per image)")
    log.info(f"max abs pixel difference vs transformers: {max_diff:.3g}")
    for name in names:
        log.info(f"{name:>15}: {ips[name]:8.1f} images/s (median of {args.repeats} passes; "
                 f"per-pass seconds {', '.join(f'{t:.2f}' for t in totals[name])})")
    for name in ours:
        log.info(f"throughput ratio {name} / transformers: {ips[name] / ips['transformers']:.2f}x")
    return {"max_diff": max_diff, **{f"ips_{k}": v for k, v in ips.items()}}


if __name__ == "__main__":
    main()
