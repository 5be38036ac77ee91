"""Benchmark: training throughput in real (non-pad) tokens/s, per batch layout, at two model shapes.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_throughput.py [--shape tiny 7b-profile]
        [--steps 3 --batch-size 8 --repeats 3 --threads 1] [--dense-packed] [--compile] [--skip-grouped]

Shapes (random weights, built from configs):
  tiny         the ``tiny`` preset (6-layer Llama, hidden 192; CLIP-style tower, 48 px tiles): attention- and
               overhead-dominated, as small models are.
  7b-profile   LLaVA-NeXT scaled down so a step fits one CPU thread in seconds: a 2-layer Llama with
               hidden 1024 and Llama's MLP ratio (intermediate 2816, 8 heads of 128): per token the MLP does
               two thirds of the FLOPs, as in Vicuna-7B; a 2-layer CLIP-style tower (hidden 256, 56 px tiles,
               patch 14: 16 tokens a tile, 30-90 an image) with LLaVA-NeXT's 1+4-tile AnyRes grids scaled by 1/6,
               mlp2x_gelu. Rows of 1024 tokens.

Data: a LLaVA-665K-like mix (seeded; ``synthetic_samples``): 90% image samples (55% short VQA, 1-3 turns
of one-word answers; 25% multi-turn VQA, 4-10 turns; 10% long instructions with 40-200-token answers) and
10% text-only conversations (ShareGPT-like, up to 900 tokens); random image sizes, so AnyRes gives 1-5 tiles.
Token ids are random (the loss is not the point); labels only on the answers, as the real pipeline makes.

Runs (each trains the same ``--steps x --batch-size`` samples, forward + backward + AdamW):
  transformers, padded   LlavaNextForConditionalGeneration (our model's native export, same weights),
                         batches in random order, right-padded: what a plain HF Trainer does
  ours, padded           the same batches through MultimodalLM
  ours, length-grouped   the same samples sorted by length before batching (HF Trainer's group_by_length
                         megabatches: here the run's whole pool), right-padded
  ours, packed           each random-order batch packed into rows of the model's max_length
                         (``PackingCollator``, position_ids per sample), attention ``sdpa_packed``
  (--dense-packed)       the same packed rows through sdpa with transformers' dense block-diagonal mask
  (--compile)            ours padded / packed with ``mllm.compiling.compile_blocks`` (the training option
                         ``torch_compile: true``); its warm-up run (the compilation) is printed apart

Before timing, ours and transformers must agree on one padded batch (loss 1e-4, gradient norm 1e-3 relative).
Then one warm-up run of each and ``--repeats`` rounds in rotating order; tokens/s from the best round (a
shared machine only ever makes runs slower), the median beside it. ``pad %`` is the share of the token
positions a layout computes that are padding. The load average is printed before and after.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import random
import statistics
import sys
import tempfile
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.train_step import build_models, check_same, note, trainer  # noqa: E402

THEIRS = "transformers, padded"
PADDED = "ours, padded"
SHAPES = ("tiny", "7b-profile")


def shape_config(name: str):
    from mllm.config import apply_overrides
    from mllm.presets import get_preset

    cfg = get_preset("tiny")
    if name == "tiny":
        return cfg
    if name != "7b-profile":
        raise SystemExit(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    cfg.name = "7b-profile"
    cfg.vision.config = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                             image_size=56, patch_size=14, hidden_act="quick_gelu")
    cfg.llm.config = dict(cfg.llm.config, hidden_size=1024, intermediate_size=2816, num_hidden_layers=2,
                          num_attention_heads=8, num_key_value_heads=8)
    cfg = apply_overrides(cfg, ["image.size=56", "max_length=1024"])
    cfg.anyres.grid_pinpoints = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
    return cfg


def synthetic_samples(model, n: int, seed: int, max_length: int) -> List[Dict[str, Any]]:
    """``n`` encoded samples (the dataset's layout) with a LLaVA-665K-like length mix; see the module doc."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    tok = model.tokenizer
    img_id, vocab = model.image_token_id, model.llm.get_input_embeddings().num_embeddings
    specials = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, img_id}
    s = model.vision_tower.image_size

    def words(k: int) -> List[int]:
        out = []
        while len(out) < k:
            t = rng.randrange(vocab)
            if t not in specials:
                out.append(t)
        return out

    samples = []
    for _ in range(n):
        r = rng.random()
        kind = "text" if r < 0.10 else "vqa" if r < 0.65 else "dialog" if r < 0.90 else "instruct"
        turns = {"text": (1, 4), "vqa": (1, 3), "dialog": (4, 10), "instruct": (1, 4)}[kind]
        q_len, a_len = {"text": ((10, 60), (50, 300)), "vqa": ((8, 20), (1, 5)), "dialog": ((8, 20), (1, 10)),
                        "instruct": ((10, 30), (40, 200))}[kind]
        ids, labels = [tok.bos_token_id] + words(12), [-100] * 13  # BOS + a system line
        pixel_values, sizes = [], []
        if kind != "text":
            hw = (rng.randint(s // 2, 3 * s), rng.randint(s // 2, 3 * s))
            n_img = model.num_image_tokens(hw)
            ids += [img_id] * n_img
            labels += [-100] * n_img
            pixel_values.append(torch.randn((model.geometry.num_tiles(hw), 3, s, s), generator=g))
            sizes.append(hw)
        for _ in range(rng.randint(*turns)):
            q, a = words(rng.randint(*q_len)), words(rng.randint(*a_len)) + [tok.eos_token_id]
            if len(ids) + len(q) + len(a) > max_length:
                break
            ids += q + a
            labels += [-100] * len(q) + a
        samples.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "length": len(ids),
                        "pixel_values": pixel_values, "image_sizes": sizes})
    return samples


def cells(batches) -> int:
    return sum(b["input_ids"].numel() for b in batches)


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def bench_shape(name: str, args) -> List[str]:
    from data_pipelines.collate import PackingCollator, PaddingCollator
    from mllm.attention import PACKED_SDPA, register
    from mllm.compiling import compile_blocks

    register()
    cfg = shape_config(name)
    with tempfile.TemporaryDirectory(prefix="mllm_tput_bench_") as work:
        note(f"[{name}] building and exporting the model ...")
        ours, theirs, _ = build_models(None, args.seed, work, config=cfg)
    L = ours.config.max_length
    pad = ours.tokenizer.pad_token_id
    n = args.steps * args.batch_size
    samples = synthetic_samples(ours, n, args.seed, L)
    real = sum(s["length"] for s in samples)
    groups = [samples[k * args.batch_size:(k + 1) * args.batch_size] for k in range(args.steps)]  # random order
    by_len = sorted(samples, key=lambda s: -s["length"])
    grouped = [by_len[k * args.batch_size:(k + 1) * args.batch_size] for k in range(args.steps)]
    layouts = {"padded": [PaddingCollator(pad)(g) for g in groups],
               "grouped": [PaddingCollator(pad)(g) for g in grouped],
               "packed": [PackingCollator(L, pad)(g) for g in groups]}
    text_only = [s for s in samples if not s["image_sizes"]][:1]
    agreement = check_same(ours, theirs, PaddingCollator(pad)(text_only + groups[0][:3]))

    runs = {THEIRS: (trainer(theirs, layouts["padded"]), "padded"),
            PADDED: (trainer(ours, layouts["padded"], "sdpa"), "padded"),
            "ours, length-grouped": (trainer(ours, layouts["grouped"], "sdpa"), "grouped"),
            "ours, packed": (trainer(ours, layouts["packed"], PACKED_SDPA), "packed")}
    if args.skip_grouped:
        del runs["ours, length-grouped"]
    if args.dense_packed:
        runs["ours, packed, dense mask"] = (trainer(ours, layouts["packed"], "sdpa"), "packed")
    compile_s: Dict[str, float] = {}
    if args.compile:
        compiled = copy.deepcopy(ours)
        compiled.llm.set_attn_implementation(PACKED_SDPA)
        compile_blocks(compiled)
        runs["ours, padded, compiled"] = (trainer(compiled, layouts["padded"]), "padded")
        runs["ours, packed, compiled"] = (trainer(compiled, layouts["packed"]), "packed")
    before = load()
    note(f"[{name}] warm-up, then {args.repeats} rounds of {len(runs)} runs x {args.steps} steps (load {before})")
    for k, (run, _) in runs.items():
        t = run()
        if "compiled" in k:
            compile_s[k] = t
        note(f"  warm-up {k}: {t:.1f}s")
    times: Dict[str, List[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(args.repeats):
        note(f"[{name}] round {r + 1}/{args.repeats}")
        k = r % len(names)
        for key in names[k:] + names[:k]:
            times[key].append(runs[key][0]())

    best = {k: real / min(v) for k, v in times.items()}
    med = {k: real / statistics.median(v) for k, v in times.items()}
    n_ours = sum(p.numel() for p in ours.parameters()) / 1e6
    n_llm = sum(p.numel() for p in ours.llm.parameters()) / 1e6
    lengths = sorted(s["length"] for s in samples)
    out = [f"== {name}: ours {n_ours:.1f}M params (LLM {n_llm:.1f}M, hidden {ours.llm.config.hidden_size}, "
           f"{ours.llm.config.num_hidden_layers} layers), rows of {L}; {args.steps} steps x batch "
           f"{args.batch_size} = {n} samples, {real} real tokens per run (lengths {lengths[0]}-{lengths[-1]}, "
           f"median {lengths[len(lengths) // 2]}, {sum(1 for s in samples if s['image_sizes'])} with an image)",
           f"   same work: {agreement}",
           f"   torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average {before} before, "
           f"{load()} after; {args.repeats} rounds, best (median)"]
    w = max(len(k) for k in names)
    out.append(f"   {'run'.ljust(w)}  real tok/s best (median)  x transformers  x ours padded  pad %  "
               f"positions/step  s/step")
    for k in names:
        lay = layouts[runs[k][1]]
        c = cells(lay)
        out.append(f"   {k.ljust(w)}  {best[k]:10.0f} ({med[k]:7.0f})  {best[k] / best[THEIRS]:13.2f}x  "
                   f"{best[k] / best[PADDED]:12.2f}x  {100 * (1 - real / c):5.1f}  {c / len(lay):14.0f}  "
                   f"{min(times[k]) / args.steps:6.2f}")
    for k, t in compile_s.items():
        out.append(f"   {k}: warm-up (compilation + {args.steps} steps) {t:.1f}s")
    ours_best = max((k for k in names if k != THEIRS and "compiled" not in k), key=lambda k: best[k])
    packed = best["ours, packed"] / best[PADDED]
    goal = [f"   goals: packing >= 1.2x our padding: {packed:.2f}x ({'met' if packed >= 1.2 else 'missed'})"]
    if name == "7b-profile":
        r = best[ours_best] / best[THEIRS]
        goal.append(f"ours best ({ours_best}) >= 1.5x transformers: {r:.2f}x ({'met' if r >= 1.5 else 'missed'})")
    out.append("; ".join(goal))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", nargs="+", default=list(SHAPES), choices=SHAPES)
    p.add_argument("--steps", type=int, default=3, help="training steps (batches) per timed run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up run of each")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steady on shared cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dense-packed", action="store_true", help="add packed rows through sdpa's dense mask")
    p.add_argument("--compile", action="store_true", help="add compiled runs (compile_blocks, inductor)")
    p.add_argument("--skip-grouped", action="store_true", help="leave out the length-grouped run (shorter)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    for shape in args.shape:
        print("\n".join(bench_shape(shape, args)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
