"""The demo's generation step: Shapes gen scenes -> the ``gen`` stage on the instruct model -> images for the
held-out prompts -> rule-based checker + Frechet distance in our tower's features.

    from mllm.app.demo_gen import GenPlan, run_gen_step
    row, metrics = run_gen_step("demo_out", "demo_out/data", "demo_out/instruct", GenPlan())
    # demo_out/gen/                      the gen stage's output (a checkpoint with the head; `mllm generate`)
    # demo_out/generation_metrics.json   colour_shape_accuracy, ..., fd, fd_real_vs_real, timings, plan
    # demo_out/generation_samples.png    the first held-out prompts' images, 8 per row (prompts in the json)

    python -m mllm.app.demo_gen --out /tmp/gen_demo --init-from demo_out/instruct [--quick]   # on its own

``plan`` is a ``GenPlan``, or the demo's plan: one with a ``gen`` attribute (a GenPlan) is used as that;
otherwise a smoke plan when its ``max_steps`` > 0 and the default plan if not, with its ``seed`` and
``bf16``. The default plan was chosen by measurement on one torch thread (see ``GenPlan``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from data_pipelines.shapes.gen import make_gen_data, read_gen_json
from eval.gen.fd import evaluate_generation
from mllm.model import MultimodalLM
from train_stages.runner import run_stage
from train_stages.specs import TrainConfig

log = logging.getLogger("mllm.app.demo")

METRICS_FILE = "generation_metrics.json"
GRID_FILE = "generation_samples.png"


@dataclass
class GenPlan:
    n_train: int = 2000
    n_test: int = 200
    max_shapes: int = 2
    # measured on one torch thread (see the gen-stage report): 3 epochs of 2000 at batch 8 = 750 steps, about
    # 110 s; batch 16 x 375 steps costs the same and scores the same, with a worse FD; lr 4e-3 no better
    epochs: float = 3.0
    batch_size: int = 8
    lr: float = 2e-3
    max_steps: int = -1  # > 0: cap the stage (smoke runs)
    warmup_ratio: float = 0.05
    # the head: MetaQuery tokens and the DiT (tiny preset; README "Measured results" has what it reaches)
    gen_head: Dict[str, Any] = field(default_factory=lambda: {"num_queries": 16, "dit": {"preset": "tiny"}})
    sample_steps: int = 10
    cfg_scale: float = 3.0
    n_eval: Optional[int] = None  # held-out prompts generated and scored (None: all of gen_test.json)
    sample_batch: int = 50
    grid_images: int = 32
    seed: int = 0
    bf16: bool = True


QUICK_GEN = GenPlan(n_train=32, n_test=8, epochs=1.0, batch_size=8, max_steps=4, sample_steps=2, n_eval=8,
                    grid_images=8)


def resolve_gen_plan(plan: Any = None) -> GenPlan:
    """A GenPlan from ``plan`` (see the module docstring)."""
    if plan is None:
        return GenPlan()
    if isinstance(plan, GenPlan):
        return plan
    if isinstance(getattr(plan, "gen", None), GenPlan):
        return plan.gen
    base = QUICK_GEN if getattr(plan, "max_steps", -1) > 0 else GenPlan()
    return dataclasses.replace(base, seed=getattr(plan, "seed", base.seed), bf16=getattr(plan, "bf16", base.bf16))


def ensure_gen_data(data_dir: str, plan: GenPlan) -> Tuple[str, str]:
    """gen_train.json / gen_test.json in ``data_dir``, made (data_pipelines.shapes.gen) when absent."""
    train, test = os.path.join(data_dir, "gen_train.json"), os.path.join(data_dir, "gen_test.json")
    if not (os.path.exists(train) and os.path.exists(test)):
        size = int(plan.gen_head.get("image_size", 48))
        make_gen_data(data_dir, seed=plan.seed, n_train=plan.n_train, n_test=plan.n_test, size=size,
                      max_shapes=plan.max_shapes, overwrite=True)
    return train, test


def gen_stage_config(out: str, init_from: str, train_json: str, plan: GenPlan):
    return TrainConfig.from_dict(dict(
        stage="gen", output_dir=os.path.join(out, "gen"), init_from=init_from,
        data=[{"path": train_json, "format": "gen"}], deepspeed="none", gen_head=dict(plan.gen_head),
        per_device_train_batch_size=plan.batch_size, learning_rate=plan.lr, num_train_epochs=plan.epochs,
        max_steps=plan.max_steps, warmup_ratio=plan.warmup_ratio, logging_steps=10, save_steps=0,
        seed=plan.seed, bf16=plan.bf16), source="demo:gen")


def sample_prompts(model, prompts: List[str], plan: GenPlan):
    """Images (N, 3, H, W) float32 in [0, 1] for ``prompts``, in batches, from one seeded generator."""
    import torch

    generator = torch.Generator().manual_seed(plan.seed)
    out = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.bf16 and model.device.type == "cpu"):
        for i in range(0, len(prompts), plan.sample_batch):
            out.append(model.generate_images(prompts[i:i + plan.sample_batch], steps=plan.sample_steps,
                                             cfg_scale=plan.cfg_scale, generator=generator).float())
    return torch.cat(out)


def save_grid(images, path: str, cols: int = 8, pad: int = 2, scale: int = 3) -> None:
    """(N, 3, H, W) in [0, 1] -> one PNG, ``cols`` images per row on white, enlarged ``scale`` times (nearest
    neighbour: the pixels stay as generated, just visible)."""
    import numpy as np
    from PIL import Image

    n, _, h, w = images.shape
    rows = (n + cols - 1) // cols
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)  # (N, H, W, 3)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y:y + h, x:x + w] = arr[i]
    grid = Image.fromarray(canvas, "RGB")
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    grid.save(path)


def run_gen_step(out: str, data_dir: str, init_from: str, plan: Any = None) -> Tuple[Dict, Dict]:
    """Train the head on ``init_from`` (an instruct-stage output), generate and score; returns the demo's
    summary row {"step", "seconds", "loss"} and the metrics written to ``out/generation_metrics.json``."""
    plan = resolve_gen_plan(plan)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    train_json, test_json = ensure_gen_data(data_dir, plan)
    t_data = time.time() - t0
    summary = run_stage(gen_stage_config(out, init_from, train_json, plan))
    t_train = time.time() - t0 - t_data

    t = time.time()
    model = MultimodalLM.from_pretrained(os.path.join(out, "gen"))
    records = read_gen_json(test_json)
    records = records[:plan.n_eval] if plan.n_eval else records
    prompts = [r["prompt"] for r in records]
    images = sample_prompts(model, prompts, plan)
    t_sample = time.time() - t
    t = time.time()
    metrics: Dict[str, Any] = dict(evaluate_generation(model, test_json, images))
    t_eval = time.time() - t
    grid = images[:plan.grid_images]
    save_grid(grid, os.path.join(out, GRID_FILE))
    seconds = time.time() - t0
    metrics.update({
        "seconds": {"data": round(t_data, 1), "train": round(t_train, 1), "sample": round(t_sample, 1),
                    "score": round(t_eval, 1), "total": round(seconds, 1)},
        "train": {"steps": summary["steps"], "mean_loss": summary["train_loss"],
                  "first_loss": summary.get("first_loss"), "last_loss": summary.get("last_loss")},
        "sampling": {"steps": plan.sample_steps, "cfg_scale": plan.cfg_scale, "seed": plan.seed},
        "model": os.path.join(out, "gen"), "gen_test": test_json, "grid": os.path.join(out, GRID_FILE),
        "grid_prompts": prompts[:plan.grid_images], "plan": dataclasses.asdict(plan),
    })
    with open(os.path.join(out, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    log.info("gen step: colour+shape accuracy %.3f, FD %.2f (real vs real %.2f), %.0f s",
             metrics["colour_shape_accuracy"], metrics["fd"], metrics["fd_real_vs_real"], seconds)
    # the last logged loss; a run shorter than one logging interval has only its mean
    loss = summary.get("last_loss", summary["train_loss"])
    row = {"step": "train + eval: gen (DiT head)", "seconds": seconds, "loss": loss}
    return row, metrics


def main(argv: Optional[List[str]] = None) -> int:
    import torch

    p = argparse.ArgumentParser(description="The demo's generation step on its own (see mllm/app/demo_gen.py).")
    p.add_argument("--out", required=True)
    p.add_argument("--init-from", required=True, help="an instruct-stage output directory")
    p.add_argument("--data", default=None, help="gen data directory (default: OUT/data; made when absent)")
    p.add_argument("--quick", action="store_true", help="a smoke run")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=JSON",
                   help="override a GenPlan field, e.g. --set epochs=2 --set lr=0.001")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(int(os.environ.get("MLLM_THREADS", "1")))
    plan = dataclasses.replace(QUICK_GEN if args.quick else GenPlan())
    for item in args.sets:
        key, _, value = item.partition("=")
        if key not in {f.name for f in dataclasses.fields(GenPlan)}:
            raise SystemExit(f"--set {item!r}: GenPlan has no field {key!r}")
        setattr(plan, key, json.loads(value))
    row, metrics = run_gen_step(args.out, args.data or os.path.join(args.out, "data"), args.init_from, plan)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("plan", "grid_prompts")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
