"""Sampling settings of a trained image head, without retraining: CFG scale x Euler steps on the held-out prompts,
scored by the demo's checker and FD, on one torch thread.

    python benchmarks/gen_sampling_sweep.py --model demo_out/gen --gen-test demo_out/data/gen_test.json \\
        --cfg 1,2,3,5 --steps 10,20 [--bf16]

Prints one markdown row per (cfg, steps): everything the prompt says, colour+kind, colour, kind, position,
count, FD / real-vs-real floor and the sampling + scoring CPU seconds.
"""
from __future__ import annotations

import argparse
import time

import torch

from data_pipelines.shapes.gen import read_gen_json
from eval.gen.fd import evaluate_generation
from mllm.model import MultimodalLM

KEYS = ("everything_accuracy", "colour_shape_accuracy", "colour_accuracy", "shape_accuracy", "position_accuracy",
        "count_accuracy")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--gen-test", required=True)
    p.add_argument("--cfg", default="3")
    p.add_argument("--steps", default="10")
    p.add_argument("--n", type=int, default=None, help="held-out prompts used (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--bf16", action="store_true", help="sample under bf16 autocast (default: float32)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = MultimodalLM.from_pretrained(args.model)
    records = read_gen_json(args.gen_test)[:args.n]
    prompts = [r["prompt"] for r in records]
    print("| cfg | steps | everything | colour+kind | colour | kind | position | count | FD/floor | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for steps in [int(s) for s in args.steps.split(",")]:
        for cfg in [float(c) for c in args.cfg.split(",")]:
            c0 = time.process_time()
            gen = torch.Generator().manual_seed(args.seed)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                images = torch.cat([model.generate_images(prompts[i:i + args.batch], steps=steps, cfg_scale=cfg,
                                                          generator=gen).float()
                                    for i in range(0, len(prompts), args.batch)])
            m = evaluate_generation(model, args.gen_test, images)  # the first len(images) records
            vals = " | ".join(f"{m[k]:.3f}" for k in KEYS)
            print(f"| {cfg:g} | {steps} | {vals} | {m['fd'] / m['fd_real_vs_real']:.1f}x | "
                  f"{time.process_time() - c0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
