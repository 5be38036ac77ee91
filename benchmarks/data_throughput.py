"""Benchmark: samples/s through the data pipeline (load + AnyRes + tokenisation + collation).

Run from the repository root::

    .venv/bin/python benchmarks/data_throughput.py [--images 300 --preset tiny --batch-size 8 --repeats 2]
        [--data DIR] [--file vqa_train.json] [--workers 0 2] [--pack]

Without ``--data`` a Shapes world with ``--images`` train images (48-400 px, aspect ratios 1:3 to 3:1)
is generated into a temporary folder; ``--file`` picks which of its LLaVA JSON files to read. The model
of ``--preset`` is built with random weights only for its tokenizer, chat template and image geometry
(the tiny preset: 48 px tiles, AnyRes up to 3x1 / 2x2). For each ``--workers`` value, one warm-up epoch,
then ``--repeats`` timed epochs (persistent workers) through ``DataLoader(MultimodalDataset, LengthGroupedSampler,
PaddingCollator)`` (``--pack``: ``PackingCollator``); it prints a table of samples/s, tokens/s and tiles/s
(median of the repeats), and a single-process breakdown of where the time goes per sample.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from data_pipelines.collate import PackingCollator, PaddingCollator  # noqa: E402
from data_pipelines.dataset import MultimodalDataset  # noqa: E402
from data_pipelines.formats import load_records  # noqa: E402
from data_pipelines.images import load_image  # noqa: E402
from data_pipelines.sampler import LengthGroupedSampler  # noqa: E402
from data_pipelines.tokenize import encode_conversation  # noqa: E402


def make_loader(ds: MultimodalDataset, collate, batch_size: int, workers: int) -> DataLoader:
    sampler = LengthGroupedSampler(ds.lengths, ds.modalities, batch_size=batch_size, seed=0)
    # persistent workers: worker start-up is paid once (in the warm-up epoch), as in a long training run
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      persistent_workers=workers > 0)


def epoch(loader: DataLoader, epoch_no: int) -> Dict[str, float]:
    loader.sampler.set_epoch(epoch_no)
    ds = loader.dataset
    pad, geometry = ds.processor.tokenizer.pad_token_id, ds.processor.geometry
    tokens = tiles = 0
    t0 = time.perf_counter()
    for batch in loader:
        tokens += int((batch["input_ids"] != pad).sum())
        if "image_sizes" in batch:
            tiles += sum(geometry.num_tiles(hw) for hw in batch["image_sizes"].tolist())
    dt = time.perf_counter() - t0
    return {"seconds": dt, "samples": len(loader.sampler), "tokens": tokens, "tiles": tiles}


def breakdown(ds: MultimodalDataset, n: int) -> Dict[str, float]:
    """Milliseconds per sample of each stage, single process, on the first n records."""
    b = ds.processor
    times = {"load": 0.0, "anyres": 0.0, "tokenise": 0.0}
    samples = []
    for i in range(n):
        rec = ds.records[i]
        t0 = time.perf_counter()
        images = [load_image(src, max_pixels=b.max_pixels) for src in rec.images]
        t1 = time.perf_counter()
        processed = [b.image_processor.process(im) for im in images]
        t2 = time.perf_counter()
        counts = [b.geometry.num_image_tokens(hw) for _, hw in processed]
        encode_conversation(rec.messages, b.template, b.tokenizer, counts, max_length=b.max_length)
        t3 = time.perf_counter()
        times["load"] += t1 - t0
        times["anyres"] += t2 - t1
        times["tokenise"] += t3 - t2
        samples.append(ds.processor.encode_sample(rec))
    collate = PaddingCollator(b.tokenizer.pad_token_id)
    t0 = time.perf_counter()
    for k in range(0, n, 8):
        collate(samples[k:k + 8])
    times["collate"] = time.perf_counter() - t0
    return {k: 1000 * v / n for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300, help="Shapes train images to generate (without --data)")
    ap.add_argument("--data", help="an existing Shapes folder (skips generation)")
    ap.add_argument("--file", default="vqa_train.json", help="which LLaVA JSON of the Shapes folder")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pack", action="store_true", help="PackingCollator instead of PaddingCollator")
    args = ap.parse_args()

    from mllm.model import MultimodalLM
    from mllm.presets import get_preset

    tmp = None
    data_dir = args.data
    if data_dir is None:
        from data_pipelines.shapes import make_shapes

        tmp = tempfile.TemporaryDirectory()
        data_dir = tmp.name
        t0 = time.perf_counter()
        make_shapes(data_dir, seed=0, n_train=args.images, n_test=2)
        print(f"generated {args.images} Shapes images in {time.perf_counter() - t0:.1f}s")
    torch.manual_seed(0)
    model = MultimodalLM.build(get_preset(args.preset))
    records = load_records(os.path.join(data_dir, args.file))
    ds = MultimodalDataset.for_model(records, model)
    pad = model.tokenizer.pad_token_id
    collate = PackingCollator(ds.processor.max_length, pad) if args.pack else PaddingCollator(pad)
    n_img = sum(1 for m in ds.modalities if m == "image")
    print(f"{len(ds)} samples ({n_img} with images) from {args.file}; preset {args.preset} "
          f"(tile {model.geometry.tile_size}px, {len(model.geometry.grid_pinpoints)} pinpoints); "
          f"batch {args.batch_size}; {'packing' if args.pack else 'padding'}; {os.cpu_count()} CPUs")

    rows: List[List[str]] = []
    for workers in args.workers:
        loader = make_loader(ds, collate, args.batch_size, workers)
        epoch(loader, 0)  # warm-up: worker start-up, page cache
        runs = [epoch(loader, r + 1) for r in range(args.repeats)]
        del loader
        sec = statistics.median(r["seconds"] for r in runs)
        r0 = runs[0]
        rows.append([str(workers), f"{r0['samples'] / sec:,.0f}", f"{r0['tokens'] / sec:,.0f}",
                     f"{r0['tiles'] / sec:,.0f}", f"{1000 * sec / r0['samples']:.2f}", f"{sec:.2f}"])
    head = ["num_workers", "samples/s", "tokens/s", "tiles/s", "ms/sample", "s/epoch"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    parts = breakdown(ds, min(200, len(ds)))
    print("single process, ms per sample: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
          + " (collate: per sample, batches of 8)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
