"""Benchmark: AnyResImageProcessor vs transformers' two LLaVA-NeXT image processors on the same images.

Run from the repository root::

    .venv/bin/python benchmarks/anyres_preprocess.py [--n 200 --tile 336 --batch-size 8 --repeats 3 --threads 1 2]

Three processors see the same fixed, seeded set of RGB images (noise + filled shapes; sizes from a few pixels
to ~1500 px, extreme aspect ratios included):

  ours            ``AnyResImageProcessor`` (PIL resizes + numpy, its own thread pool)
  transformers    ``LlavaNextImageProcessorPil``: the PIL path, the pixels LLaVA-NeXT checkpoints trained on
  auto-default    what ``AutoImageProcessor.from_pretrained`` returns with default arguments for a checkpoint
                  whose preprocessor_config.json names ``LlavaNextImageProcessor`` (as LLaVA-NeXT checkpoints
                  and our export do): in transformers 5.x the torchvision backend (torch ops, bicubic resize
                  with antialias on tensors)

One warm-up pass compares every pixel (ours against each), then ``--repeats`` timed passes in which the three
alternate batch by batch (the order flips every batch), so machine noise hits all alike. For every value of
``--threads`` T, ours runs a pool of T threads and torch runs T intra-op threads (the torchvision backend's
parallelism); the PIL processor is single-threaded whatever T is. It prints the max abs pixel difference of
ours from each, images/s of each, the ratios and the load average before and after.
Goals: ours pixel-identical to the PIL path (max diff 0), and >= 2.0x the throughput of both.
``--profile`` adds where our time goes (cProfile of one single-threaded pass, by function, and the share
spent inside PIL's bicubic resize, which defines the pixels).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import AutoImageProcessor  # noqa: E402
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


def auto_default_processor(tile: int, pins: List[List[int]]):
    """AutoImageProcessor with default arguments on a LLaVA-NeXT preprocessor_config.json (the class a
    checkpoint names, whatever backend this transformers version makes the default)."""
    config = {"image_processor_type": "LlavaNextImageProcessor", "size": {"shortest_edge": tile},
              "crop_size": {"height": tile, "width": tile}, "image_grid_pinpoints": pins, "do_pad": True,
              "do_center_crop": True, "resample": 3}
    with tempfile.TemporaryDirectory(prefix="anyres_bench_") as d:
        with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
            json.dump(config, f)
        return AutoImageProcessor.from_pretrained(d)


def pixel_check(batches, procs: Dict[str, Callable[[list], Dict[str, torch.Tensor]]], reference: str) -> Dict[str, float]:
    """Max abs pixel difference of ``reference`` (ours) from each other processor over every batch."""
    diffs = {k: 0.0 for k in procs if k != reference}
    for batch in tqdm(batches, desc="warm-up + pixel check", leave=False):
        outs = {k: fn(batch) for k, fn in procs.items()}
        ref = outs[reference]
        for name in diffs:
            other = outs[name]
            if other["pixel_values"].shape != ref["pixel_values"].shape:
                raise AssertionError(f"{name}: shape {tuple(other['pixel_values'].shape)} != ours "
                                     f"{tuple(ref['pixel_values'].shape)}")
            if not torch.equal(torch.as_tensor(other["image_sizes"]).long(), ref["image_sizes"]):
                raise AssertionError(f"{name}: image_sizes differ from ours")
            diff = (ref["pixel_values"] - other["pixel_values"].float()).abs().max().item()
            diffs[name] = max(diffs[name], diff)
    return diffs


def time_passes(batches, procs, repeats: int) -> Dict[str, List[float]]:
    names = list(procs)
    totals: Dict[str, List[float]] = {k: [] for k in names}
    for rep in tqdm(range(repeats), desc="timed passes", leave=False):
        spent = dict.fromkeys(names, 0.0)
        for j, batch in enumerate(batches):
            order = names if (j + rep) % 2 == 0 else names[::-1]
            for name in order:
                t0 = time.perf_counter()
                procs[name](batch)
                spent[name] += time.perf_counter() - t0
        for name in names:
            totals[name].append(spent[name])
    return totals


def profile_ours(proc, batches) -> None:
    """Where one single-threaded pass of ours spends its time: top functions, and the PIL resize share."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(lambda: [proc(b) for b in batches])
    stats = pstats.Stats(prof)
    total = stats.total_tt
    resize = sum(v[2] for k, v in stats.stats.items() if k[2] == "<method 'resize' of 'ImagingCore' objects>")
    log.info(f"\n--- profile of ours, 1 thread: {total:.2f}s, of which PIL's C resize {resize:.2f}s "
             f"({100 * resize / total:.0f}%) ---")
    stats.sort_stats("tottime").print_stats(8)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: List[str] | None = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of images")
    parser.add_argument("--tile", type=int, default=336, help="tile size S")
    parser.add_argument("--batch-size", type=int, default=8, help="images per processor call")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over all images")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts to measure (ours: its pool; torch: intra-op threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also profile ours (1 thread)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    S = args.tile
    pins = [[S, 2 * S], [2 * S, S], [2 * S, 2 * S], [3 * S, S], [S, 3 * S]]  # LLaVA-NeXT's, scaled to S
    pil = LlavaNextImageProcessorPil(size={"shortest_edge": S}, crop_size={"height": S, "width": S},
                                     image_grid_pinpoints=pins, do_pad=True)
    auto = auto_default_processor(S, pins)
    images = make_images(args.n, args.seed)
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    sizes = np.array([im.size for im in images])
    log.info(f"{args.n} images, widths {sizes[:, 0].min()}-{sizes[:, 0].max()}, heights {sizes[:, 1].min()}-"
             f"{sizes[:, 1].max()}; tile {S}, pinpoints {pins}; batches of {args.batch_size}; cpus {os.cpu_count()}")
    log.info(f"transformers: PIL path {type(pil).__name__}; AutoImageProcessor default "
             f"{type(auto).__module__}.{type(auto).__name__}")

    results: Dict[str, float] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        ours = AnyResImageProcessor(S, pins, pil.image_mean, pil.image_std, num_threads=threads)
        procs = {"ours": ours, "transformers": lambda b: pil(b, return_tensors="pt"),
                 "auto-default": lambda b: auto(b, return_tensors="pt")}
        log.info(f"\n--- {threads} thread(s): ours {ours.num_threads}-thread pool, torch {torch.get_num_threads()} "
                 f"intra-op threads; load average before {load()}")
        diffs = pixel_check(batches, procs, "ours")
        totals = time_passes(batches, procs, args.repeats)
        ips = {name: args.n / statistics.median(t) for name, t in totals.items()}
        tiles = sum(ours.num_tiles((im.height, im.width)) for im in images)
        log.info(f"tiles produced: {tiles} ({tiles / args.n:.2f} per image); load average after {load()}")
        for name in ("transformers", "auto-default"):
            log.info(f"max abs pixel difference, ours vs {name}: {diffs[name]:.3g}")
        for name in procs:
            log.info(f"{name:>13}: {ips[name]:8.1f} images/s (median of {args.repeats} passes; "
                     f"per-pass seconds {', '.join(f'{t:.2f}' for t in totals[name])})")
        for name in ("transformers", "auto-default"):
            ratio = ips["ours"] / ips[name]
            log.info(f"throughput ratio ours / {name}: {ratio:.2f}x (goal >= 2.0x: "
                     f"{'met' if ratio >= 2.0 else 'NOT met'})")
        results.update({f"t{threads}_diff_{k}": v for k, v in diffs.items()})
        results.update({f"t{threads}_ips_{k}": v for k, v in ips.items()})
    if args.profile:
        torch.set_num_threads(1)
        profile_ours(AnyResImageProcessor(S, pins, pil.image_mean, pil.image_std, num_threads=1), batches)
    return results


if __name__ == "__main__":
    main()
