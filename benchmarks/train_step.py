"""Benchmark: one training step (forward + backward + AdamW) of ``MultimodalLM`` vs transformers' LlavaNext.

Run from the repository root::

    .venv/bin/python benchmarks/train_step.py [--steps 8 --batch-size 8 --repeats 5 --threads 2]
        [--model CKPT_DIR] [--images 120 --file vqa_train.json] [--pack-length 1024 512] [--profile]

Our model (the ``tiny`` preset with random weights, or the checkpoint ``--model``) is saved, exported natively
with ``mllm.app.export.export_model`` and loaded back as ``LlavaNextForConditionalGeneration`` (float32), so both
hold the same weights. A Shapes world of ``--images`` train images is generated into a temporary folder and
``--file`` (``vqa_train.json`` by default: 50-400 tokens, a few two-image and text-only records) is built into
samples once, up front: data loading is not timed. The samples are shuffled (seed) into batches of
``--batch-size``; every timed run trains ``--steps`` batches. Both models get the same batches in the same
layout (``PaddingCollator``: right padding; images flat over the batch, ``pixel_values`` (N_img, T_max, 3, S, S),
``image_sizes`` (N_img, 2) (h, w), which LlavaNext takes as is) and the same optimizer (AdamW, lr 1e-5).

Before timing, one padded batch goes through both: the losses must agree within 1e-4 and the gradient norms
within 1e-3 (relative), or the run stops. Then one warm-up run of each, and ``--repeats`` rounds in which
the runs alternate (the order rotates every round):
  ours, padded      the same padded batches as theirs
  ours, packed      the same samples per step through ``PackingCollator(L)`` (position_ids, use_cache=False):
                    fewer, denser rows; one run per ``--pack-length`` L (default: the model's max_length,
                    which is what ``train_stages`` packs to)
  theirs, padded    transformers has no multimodal packing path for LlavaNext
It prints samples/s (best and median round) and the ratios ours/theirs from the best rounds (goals: >= 1.0x
padded, >= 1.5x packed), with the range of the per-round ratios. On a shared machine neighbours only ever make
runs slower, so the best round is the fairest figure; a wide per-round range means noise. On 2 busy cores
``--threads 1`` is far steadier than 2 threads (OpenMP threads spin-wait when a core is taken: rounds 20x slow).
``--profile`` adds a torch.profiler table of the top operators of a few padded steps of each model.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

LR = 1e-5
LOSS_TOL = 1e-4
GRAD_RTOL = 1e-3

Batch = Dict[str, Any]


def build_models(model_dir, seed: int, work: str, config=None):
    """(ours, theirs, export path): our model in float32 and its native export loaded by transformers.
    ``config``: a ModelConfig to build with random weights instead of the tiny preset."""
    from transformers import LlavaNextForConditionalGeneration

    from mllm.app.export import export_model, load_for_export
    from mllm.model import MultimodalLM
    from mllm.presets import get_preset

    torch.manual_seed(seed)
    if model_dir is None:
        ours = MultimodalLM.build(config or get_preset("tiny")).float()
        model_dir = os.path.join(work, "ours")
        ours.save_pretrained(model_dir)
    else:
        ours = load_for_export(model_dir)  # float32, a kept LoRA adapter merged: what the export writes
    out = os.path.join(work, "hf")
    report = export_model(model_dir, out, dtype=torch.float32, log=None)
    if report.path != "llava_next":
        raise SystemExit(f"--model {model_dir}: exported as {report.path!r} ({report.reason or 'AnyRes off'}); "
                         f"this benchmark compares with LlavaNextForConditionalGeneration only")
    theirs = LlavaNextForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    return ours.train(), theirs.train(), report.path


def make_samples(model, n_images: int, file: str, work: str) -> List[Dict[str, Any]]:
    from data_pipelines.dataset import MultimodalDataset
    from data_pipelines.formats import load_records
    from data_pipelines.shapes import make_shapes

    data = os.path.join(work, "shapes")
    make_shapes(data, seed=0, n_train=n_images, n_test=2)
    ds = MultimodalDataset.for_model(load_records(os.path.join(data, file)), model, strict=True)
    return [ds[i] for i in range(len(ds))]


def make_batches(samples, batch_size: int, steps: int, seed: int) -> List[List[Dict[str, Any]]]:
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)  # random, not length-grouped: the mixed lengths padding pays for
    if len(order) < batch_size * steps:
        raise SystemExit(f"{len(order)} samples are fewer than --steps x --batch-size = {steps * batch_size}; "
                         f"raise --images")
    return [[samples[i] for i in order[k * batch_size:(k + 1) * batch_size]] for k in range(steps)]


def grad_norm(model) -> float:
    sq = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
    return sq ** 0.5


def check_same(ours, theirs, batch: Batch) -> str:
    """Same loss and gradient norm on one batch, or stop: otherwise the timings compare different work."""
    losses, norms = [], []
    for m in (ours, theirs):
        m.eval()  # no dropout (a --model checkpoint may have some): both sides deterministic
        m.zero_grad(set_to_none=True)
        loss = m(**batch).loss
        loss.backward()
        losses.append(loss.item())
        norms.append(grad_norm(m))
        m.zero_grad(set_to_none=True)
        m.train()
    if abs(losses[0] - losses[1]) > LOSS_TOL:
        raise SystemExit(f"losses differ: ours {losses[0]:.6f} vs theirs {losses[1]:.6f} (tolerance {LOSS_TOL})")
    if abs(norms[0] - norms[1]) > GRAD_RTOL * max(norms):
        raise SystemExit(f"gradient norms differ: ours {norms[0]:.6f} vs theirs {norms[1]:.6f}")
    return (f"loss ours {losses[0]:.6f} / theirs {losses[1]:.6f}; "
            f"grad norm ours {norms[0]:.6f} / theirs {norms[1]:.6f}")


def trainer(model, batches: List[Batch], attn: Optional[str] = None) -> Callable[[], float]:
    """A function that trains one step on each batch (with the LLM's attention set to ``attn`` when given)
    and returns the seconds it took."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)

    def run() -> float:
        if attn is not None and model.llm.config._attn_implementation != attn:
            model.llm.set_attn_implementation(attn)
        t0 = time.perf_counter()
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            opt.step()
        return time.perf_counter() - t0

    return run


def profile(name: str, run: Callable[[], float], rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    run()  # AdamW creates its state on the first step: keep that out of the table
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print(f"\n--- profile: {name} (top {rows} by self CPU time) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # progress on stderr, so stdout holds only the results


def batch_stats(batches: List[Batch], pad: int) -> str:
    cells = sum(b["input_ids"].numel() for b in batches)
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else
                 int((b["input_ids"] != pad).sum()) for b in batches)
    rows = sum(b["input_ids"].shape[0] for b in batches)
    width = statistics.mean(b["input_ids"].shape[1] for b in batches)
    return f"{rows / len(batches):.1f} rows x {width:.0f} wide, {100 * tokens / cells:.0f}% real tokens"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="an mllm checkpoint directory (default: the tiny preset, random init)")
    p.add_argument("--steps", type=int, default=8, help="training steps (batches) per timed run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up run of each")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--images", type=int, default=120, help="Shapes train images to generate")
    p.add_argument("--file", default="vqa_train.json", help="which LLaVA JSON of the Shapes world")
    p.add_argument("--pack-length", type=int, nargs="+", default=None,
                   help="packed row length(s), one packed run each (default: the model's max_length)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables of padded steps")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)

    import transformers

    from data_pipelines.collate import PackingCollator, PaddingCollator

    with tempfile.TemporaryDirectory(prefix="mllm_train_bench_") as work:
        note("building, saving and exporting the model; generating the Shapes world ...")
        ours, theirs, route = build_models(args.model, args.seed, work)
        samples = make_samples(ours, args.images, args.file, work)
    pad = ours.tokenizer.pad_token_id
    pack_lengths = args.pack_length or [ours.config.max_length]
    groups = make_batches(samples, args.batch_size, args.steps, args.seed)
    longest = max(s["length"] for g in groups for s in g)
    if min(pack_lengths) < longest:
        raise SystemExit(f"--pack-length {min(pack_lengths)} is shorter than the longest sample ({longest} tokens)")
    padded = [PaddingCollator(pad)(g) for g in groups]
    packed = {n: [PackingCollator(n, pad)(g) for g in groups] for n in pack_lengths}
    n_samples = args.steps * args.batch_size

    # the check batch holds a two-image or a text-only sample when the data has one: the flat image layout
    # must then still line up on both sides
    odd = [s for s in samples if len(s["image_sizes"]) != 1][:2]
    check = PaddingCollator(pad)(odd + groups[0][: max(1, args.batch_size - len(odd))])
    agreement = check_same(ours, theirs, check)

    runs = {"ours, padded": trainer(ours, padded)}
    runs.update({f"ours, packed {n}": trainer(ours, rows) for n, rows in packed.items()})
    runs["theirs, padded"] = trainer(theirs, padded)
    note(f"warm-up, then {args.repeats} rounds of {len(runs)} runs x {args.steps} steps ...")
    for name, run in runs.items():  # warm-up: allocator, thread pools, AdamW state
        note(f"  warm-up {name}: {run():.1f}s")
    times: Dict[str, List[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(args.repeats):
        note(f"round {r + 1}/{args.repeats}")
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(runs[name]())

    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    print(f"models: ours {n_ours / 1e6:.2f}M params ({args.model or 'tiny preset, random init'}), theirs "
          f"{type(theirs).__name__} {n_theirs / 1e6:.2f}M params (exported as {route}; transformers "
          f"{transformers.__version__}); float32; attention ours {ours.llm.config._attn_implementation} / "
          f"theirs {theirs.config.text_config._attn_implementation}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    n_img = sum(len(s["image_sizes"]) for g in groups for s in g)
    print(f"data: {len(samples)} samples from {args.file}; {args.steps} steps x batch {args.batch_size} "
          f"({n_img} images) per run; lengths {min(s['length'] for g in groups for s in g)}-"
          f"{max(s['length'] for g in groups for s in g)}")
    print(f"  padded: {batch_stats(padded, pad)}")
    for n, rows in packed.items():
        print(f"  packed (rows of <= {n}): {batch_stats(rows, pad)}")
    print(f"same work: {agreement}")
    print(f"{args.repeats} alternating rounds after one warm-up run each; AdamW lr {LR}\n")
    # best round: what the machine does when no neighbour interferes (the shared cores make slow outliers,
    # never fast ones); the median is shown beside it
    best = {k: n_samples / min(v) for k, v in times.items()}
    med = {k: n_samples / statistics.median(v) for k, v in times.items()}
    w = max(len(k) for k in names)
    print(f"{'run'.ljust(w)}  samples/s best  median  s/step best  seconds per run, by round")
    for k in names:
        print(f"{k.ljust(w)}  {best[k]:14.1f}  {med[k]:6.1f}  {min(times[k]) / args.steps:11.3f}  "
              f"{[round(t, 2) for t in times[k]]}")
    print()
    goals = [("ours, padded", 1.0)] + [(f"ours, packed {n}", 1.5) for n in packed]
    for key, goal in goals:
        per_round = [t / o for o, t in zip(times[key], times["theirs, padded"])]
        ratio = best[key] / best["theirs, padded"]
        print(f"ratio {key.ljust(w)} / theirs, padded: {ratio:.2f}x best, "
              f"{med[key] / med['theirs, padded']:.2f}x median (goal >= {goal}x: "
              f"{'met' if ratio >= goal else 'NOT met'}; per round {min(per_round):.2f}-{max(per_round):.2f}x)")

    if args.profile:
        few = padded[: min(3, len(padded))]
        profile("ours, padded", trainer(ours, few), 25)
        profile("theirs, padded", trainer(theirs, few), 25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
