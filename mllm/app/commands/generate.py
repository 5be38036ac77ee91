"""``mllm generate``: text -> image with a checkpoint's DiT head (trained by the ``gen`` stage).

    mllm generate --model runs/gen --prompt "a red circle at the top" --out red.png
    mllm generate --model runs/gen --prompt "a blue star on the left" --out star.png --n 4 --seed 1
        # -> star_0.png star_1.png star_2.png star_3.png

Sampling: Euler integration of the rectified flow from noise (``--steps``) with classifier-free guidance
(``--cfg``; 1 = none). The same ``--seed`` (and settings) gives the same pixels; the K images of ``--n K``
are one batch drawn from that seed. Files are RGB PNGs at the head's image size.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List

NAME = "generate"
HELP = "generate images from a text prompt with a model's image-generation head"
DESCRIPTION = """Generate images from a text prompt with the DiT head of an mllm checkpoint (a 'gen' stage output).

  mllm generate --model DIR --prompt TEXT --out FILE.png [--steps N --cfg W --seed S --n K]

With --n K > 1 the images go to FILE_0.png ... FILE_{K-1}.png (the --out name with _i before the
extension). The same seed gives the same images. Errors (no head, bad settings): one line on stderr, exit 2."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="mllm checkpoint directory with an image-generation head")
    p.add_argument("--prompt", required=True, help='what to draw, e.g. "a red circle at the top"')
    p.add_argument("--out", required=True, help="output PNG path (with --n K > 1: FILE_0.png ... FILE_{K-1}.png)")
    # the defaults are the demo's measured sampling (mllm/app/demo_gen.py GenPlan)
    p.add_argument("--steps", type=int, default=10, help="Euler sampling steps (default: 10)")
    p.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance scale; 1 = off (default: 1.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the starting noise (default: 0)")
    p.add_argument("--n", type=int, default=1, help="number of images (default: 1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")


def output_paths(out: str, n: int) -> List[str]:
    """``out`` itself for one image; ``stem_i.ext`` for several."""
    if n == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_{i}{ext}" for i in range(n)]


def _check(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.cfg < 0:
        raise ValueError(f"--cfg must be >= 0, got {args.cfg}")
    if not args.prompt.strip():
        raise ValueError("--prompt is empty")
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out {args.out!r} must be a .png file")
    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"--model {args.model!r} is not a directory")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from mllm.config import ModelConfig  # lazy: CLI start-up (see commands/__init__.py)
    from mllm.model import MultimodalLM  # lazy: CLI start-up (see commands/__init__.py)

    _check(args)
    # fail before loading any weights when the checkpoint has no head
    if not ModelConfig.load(args.model).gen_head:
        raise ValueError(f"{args.model} has no image-generation head (its mllm_config.json has no gen_head); "
                         f"train one with `mllm train --stage gen --config ...` first")
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    model = MultimodalLM.from_pretrained(args.model, device=args.device)
    images = model.generate_images([args.prompt] * args.n, steps=args.steps, cfg_scale=args.cfg, seed=args.seed)
    paths = output_paths(args.out, args.n)
    for path, img in zip(paths, images):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        arr = (img.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)  # (H, W, 3)
        Image.fromarray(arr, "RGB").save(path)
        print(path)
    return 0
