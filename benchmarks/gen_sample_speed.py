"""Benchmark: image sampling speed of the generation head (images/s), end to end through ``GenHead.sample``.

Run from the repository root::

    .venv/bin/python benchmarks/gen_sample_speed.py [--dit tiny --steps 20 --cfg 3.0 --batches 1 8 --repeats 3]

A random-weight ``tiny`` MultimodalLM (the Shapes-world preset) gets a fresh GenHead (``--dit`` preset,
16 queries, pixel space 48x48); the DiT's zero-initialised layers are perturbed so every layer does real
work (speed does not depend on the weights' values). Each timed call is one ``GenHead.sample``: the prompt
goes once through the LLM with the queries, then ``--steps`` Euler steps, each one DiT pass over a batch
of 2B (conditional + null) when ``--cfg`` != 1. For each batch size and for one torch thread and torch's
default thread count, it prints the median over ``--repeats`` runs (after one warm-up) as images/s and
milliseconds per DiT step.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from mllm.gen import GenHead, GenHeadConfig  # noqa: E402
from mllm.model import MultimodalLM  # noqa: E402
from mllm.presets import get_preset  # noqa: E402

log = logging.getLogger("mllm.bench")

PROMPTS = ["a red circle at the top and a blue star on the left", "a green square in the center",
           "an orange cross on the right", "a purple triangle at the bottom and a yellow circle at the top"]


def left_padded(tokenizer, texts):
    rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def time_sample(head, model, ids, mask, steps, cfg, repeats) -> float:
    head.sample(model, ids, mask, steps=steps, cfg_scale=cfg, generator=torch.Generator().manual_seed(0))
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        head.sample(model, ids, mask, steps=steps, cfg_scale=cfg, generator=torch.Generator().manual_seed(r))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dit", default="tiny", help="DiT preset of the head")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    default_threads = torch.get_num_threads()
    model = MultimodalLM.build(get_preset("tiny")).eval()
    head = GenHead(GenHeadConfig(dit=args.dit), llm_hidden_size=model.llm.config.hidden_size).eval()
    with torch.no_grad():
        for prm in head.dit.parameters():
            prm.add_(torch.randn_like(prm) * 0.02)
    n_params = sum(q.numel() for q in head.dit.parameters())
    log.info(f"DiT {args.dit}: {n_params / 1e6:.2f}M params, {head.dit.config.grid_size ** 2} tokens; "
             f"steps {args.steps}, cfg {args.cfg} ({'2B' if args.cfg != 1 else 'B'} per DiT pass)")
    rows = []
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for b in args.batches:
            ids, mask = left_padded(model.tokenizer, [PROMPTS[i % len(PROMPTS)] for i in range(b)])
            sec = time_sample(head, model, ids, mask, args.steps, args.cfg, args.repeats)
            rows.append((threads, b, b / sec, 1000 * sec / args.steps))
    torch.set_num_threads(default_threads)
    print(f"{'threads':>7} {'batch':>5} {'images/s':>9} {'ms/step':>8}")
    for threads, b, ips, ms in rows:
        print(f"{threads:>7} {b:>5} {ips:>9.2f} {ms:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
