"""The demo's generation step: Shapes gen scenes -> the ``gen`` stage on the instruct model -> images for the
held-out prompts -> rule-based checker + Frechet distance in our tower's features.

    from mllm.app.demo_gen import GenPlan, run_gen_step
    row, metrics = run_gen_step("demo_out", "demo_out/data", "demo_out/instruct", GenPlan())
    # demo_out/gen/                      the gen stage's output (a checkpoint with the head; `mllm generate`)
    # demo_out/generation_metrics.json   everything_accuracy, colour_shape_accuracy, ..., fd, timings, plan
    # demo_out/generation_samples.png    the first held-out prompts' images, each with its prompt and verdict
    # demo_out/generation_loss.png       the gen stage's loss against steps
    # metrics["cli_example"]             the checker's verdict on what `mllm generate` draws for EXAMPLE_PROMPT

    python -m mllm.app.demo_gen --out /tmp/gen_demo --init-from demo_out/instruct [--quick]   # on its own

``plan`` is a ``GenPlan``, or the demo's plan: one with a ``gen`` attribute (a GenPlan) is used as that;
otherwise a smoke plan when its ``max_steps`` > 0 and the default plan if not, with its ``seed`` (not its
``bf16``: the gen step's precision is its own, see ``GenPlan.bf16``). The default plan was chosen by
measurement on one torch thread (see ``GenPlan``).
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

from data_pipelines.shapes.gen import make_gen_data, parse_prompt, read_gen_json
from eval.gen.checker import check_image, verdict
from eval.gen.fd import evaluate_generation
from eval.gen.plots import save_loss_curve, save_sample_grid
from mllm.model import MultimodalLM
from train_stages.runner import run_stage
from train_stages.specs import TrainConfig

log = logging.getLogger("mllm.app.demo")

METRICS_FILE = "generation_metrics.json"
# what `mllm generate --model OUT/gen --prompt EXAMPLE_PROMPT` draws with its default settings (seed 0, 10 Euler
# steps, guidance 1.5), checked like the held-out prompts
EXAMPLE_PROMPT = "a red circle at the top"
GRID_FILE = "generation_samples.png"
LOSS_FILE = "generation_loss.png"


@dataclass
class GenPlan:
    n_train: int = 2000
    n_test: int = 200
    max_shapes: int = 2
    # measured on one torch thread (benchmarks/gen_conditioning.py, a random-init tiny LLM): with the head's SD3
    # shift of 2, 6 epochs of 2000 at batch 8 = 1500 steps fit the step's 5-minute budget with room to spare.
    # The outcome still depends on the seed: everything the prompt says at lr 2e-3, seeds 0 / 1: 0.81 / 0.17
    # (seed 1's loss spikes when warmup ends); at lr 1e-3, seeds 0 / 1 / 2: 0.66 / 0.92 / 0.32.
    # Batch 16 x half the steps costs the same and scores the same; lr 4e-3 is no better
    epochs: float = 6.0
    batch_size: int = 8
    lr: float = 1e-3
    max_steps: int = -1  # > 0: cap the stage (smoke runs)
    warmup_ratio: float = 0.05
    ema_decay: float = 0.0  # > 0: the saved head is the EMA of its weights (train_stages.trainer.EMACallback)
    log_every: int = 10  # steps between logged losses (metrics.jsonl, the loss plot)
    # the head: GenHeadConfig's defaults with the tiny DiT (README "Measured results" has what it reaches)
    gen_head: Dict[str, Any] = field(default_factory=lambda: {"dit": {"preset": "tiny"}})
    # sampling: 25 Euler steps score as 10; guidance 1 to 2.5 scores the same (3 and above worse), 1.5 the best FD
    sample_steps: int = 10
    cfg_scale: float = 1.5
    n_eval: Optional[int] = None  # held-out prompts generated and scored (None: all of gen_test.json)
    sample_batch: int = 50
    grid_images: int = 32
    seed: int = 0
    # sampling precision. Training is float32 either way (the Trainer autocasts the model's forward, and the gen
    # stage's loss is the head's own method); sampling under bf16 autocast scores the same as float32 but the
    # tiny DiT's small matmuls run 1.6x slower in bf16 on one CPU thread. The demo's own bf16 setting is for
    # its LLM stages and is not inherited
    bf16: bool = False


QUICK_GEN = GenPlan(n_train=32, n_test=8, epochs=1.0, batch_size=8, max_steps=4, sample_steps=2, n_eval=8,
                    grid_images=8, log_every=1)


def resolve_gen_plan(plan: Any = None) -> GenPlan:
    """A GenPlan from ``plan`` (see the module docstring)."""
    if plan is None:
        return GenPlan()
    if isinstance(plan, GenPlan):
        return plan
    if isinstance(getattr(plan, "gen", None), GenPlan):
        return plan.gen
    base = QUICK_GEN if getattr(plan, "max_steps", -1) > 0 else GenPlan()
    return dataclasses.replace(base, seed=getattr(plan, "seed", base.seed))


def ensure_gen_data(data_dir: str, plan: GenPlan) -> Tuple[str, str]:
    """gen_train.json / gen_test.json in ``data_dir`` (``mllm data make-shapes`` writes them with the world),
    made again (data_pipelines.shapes.gen) when absent or of other sizes than the plan's."""
    train, test = os.path.join(data_dir, "gen_train.json"), os.path.join(data_dir, "gen_test.json")

    def records(path: str) -> int:
        with open(path) as f:
            return len(json.load(f))

    if not (os.path.exists(train) and os.path.exists(test)) or \
            (records(train), records(test)) != (plan.n_train, plan.n_test):
        size = int(plan.gen_head.get("image_size", 48))
        make_gen_data(data_dir, seed=plan.seed, n_train=plan.n_train, n_test=plan.n_test, size=size,
                      max_shapes=plan.max_shapes, overwrite=True)
    return train, test


def gen_stage_config(out: str, init_from: str, train_json: str, plan: GenPlan):
    return TrainConfig.from_dict(dict(
        stage="gen", output_dir=os.path.join(out, "gen"), init_from=init_from,
        data=[{"path": train_json, "format": "gen"}], deepspeed="none", gen_head=dict(plan.gen_head),
        per_device_train_batch_size=plan.batch_size, learning_rate=plan.lr, num_train_epochs=plan.epochs,
        max_steps=plan.max_steps, warmup_ratio=plan.warmup_ratio, ema_decay=plan.ema_decay,
        logging_steps=plan.log_every, save_steps=0, seed=plan.seed, bf16=plan.bf16), source="demo:gen")


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


def run_gen_step(out: str, data_dir: str, init_from: str, plan: Any = None) -> Tuple[Dict, Dict]:
    """Train the head on ``init_from`` (an instruct-stage output), generate and score; returns the demo's
    summary row {"step", "seconds", "loss"} and the metrics written to ``out/generation_metrics.json``."""
    plan = resolve_gen_plan(plan)
    os.makedirs(out, exist_ok=True)
    t0, cpu0 = time.time(), time.process_time()
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
    seconds = time.time() - t0  # the step's cost: training, sampling and scoring; the pictures below are extra
    # CPU seconds of this process: on one thread what the wall time is on a quiet machine, whatever the load
    cpu_seconds = time.process_time() - cpu0
    n_grid = min(plan.grid_images, len(records))
    verdicts = [verdict(check_image(images[i], records[i]["shapes"])) for i in range(n_grid)]
    save_sample_grid(images[:n_grid], prompts[:n_grid], verdicts, os.path.join(out, GRID_FILE),
                     title=f"held-out prompts: everything the prompt says {metrics['everything_accuracy']:.2f}, "
                           f"colour+kind {metrics['colour_shape_accuracy']:.2f}")
    save_loss_curve(os.path.join(out, "gen", "metrics.jsonl"), os.path.join(out, LOSS_FILE))
    example = model.generate_images([EXAMPLE_PROMPT], seed=0)[0]  # the CLI's defaults, float32 like the CLI
    example_verdict = verdict(check_image(example, parse_prompt(EXAMPLE_PROMPT)))
    metrics.update({
        "seconds": {"data": round(t_data, 1), "train": round(t_train, 1), "sample": round(t_sample, 1),
                    "score": round(t_eval, 1), "total": round(seconds, 1), "cpu_total": round(cpu_seconds, 1),
                    "load_avg": [round(v, 2) for v in os.getloadavg()]},
        "train": {"steps": summary["steps"], "mean_loss": summary["train_loss"],
                  "first_loss": summary.get("first_loss"), "last_loss": summary.get("last_loss")},
        "sampling": {"steps": plan.sample_steps, "cfg_scale": plan.cfg_scale, "seed": plan.seed},
        "model": os.path.join(out, "gen"), "gen_test": test_json, "grid": os.path.join(out, GRID_FILE),
        "loss_plot": os.path.join(out, LOSS_FILE), "grid_prompts": prompts[:n_grid], "grid_verdicts": verdicts,
        "cli_example": {"prompt": EXAMPLE_PROMPT, "verdict": example_verdict},
        "plan": dataclasses.asdict(plan),
    })
    with open(os.path.join(out, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    log.info("gen step: everything the prompt says %.3f, colour+shape %.3f, FD %.2f (real vs real %.2f), %.0f s",
             metrics["everything_accuracy"], metrics["colour_shape_accuracy"], metrics["fd"],
             metrics["fd_real_vs_real"], seconds)
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
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("plan", "grid_prompts", "grid_verdicts")},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
