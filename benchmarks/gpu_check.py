"""GPU check: training throughput, MFU, memory and decode speed of the 7B-shaped preset on one GPU.

Run from the repository root (one command, each part in its own process under a time limit, ~4-7 min)::

    .venv/bin/python benchmarks/gpu_check.py [--parts train qlora decode] [--peak-tflops 989 --hbm-gbps 4800]
    .venv/bin/python benchmarks/gpu_check.py --dry-run        # CPU: the tiny preset, the same code, ~1 min

The model is ``--preset`` (``llava-next-7b``: CLIP ViT-L/14-336 + Vicuna-7B-shaped Llama, AnyRes) built
offline from its configs with random weights, in bf16, straight on the GPU. Samples are synthetic but
shaped like LLaVA-665K (a seeded sampler: mostly one image of 300-1000 px and a short VQA answer, a tail
of long conversations, a few text-only), with each image's true AnyRes token count. Parts:

  train   bf16 steps of the whole model (tower, connector, LLM all training; activation checkpointing), the
          same samples padded (``PaddingCollator``) and packed (``PackingCollator`` at the model's
          max_length: position_ids restart per sample; attention ``flash_attention_2`` when flash-attn is
          importable, else ``sdpa``, for both layouts). Under DeepSpeed ZeRO-3 (``train_stages/zero3.json``)
          when deepspeed is importable and the estimated memory (16 bytes per trained weight + activations)
          fits the GPU; otherwise the LLM is cut to the most layers that fit (printed), and without deepspeed
          plain AdamW (bf16 states, 8 bytes per weight) is used (printed).
  qlora   the instruct stage's QLoRA policy (``train_stages.freeze.apply_policy``: LLM reloaded 4-bit NF4 with
          bitsandbytes + LoRA, connector trained, tower frozen), padded steps.
  decode  batch-1 greedy decoding of the native export (``mllm.app.export``) loaded by transformers
          (``--decode-source model`` decodes our model instead), prefill timed apart.

Printed per part: tokens/s of real tokens, MFU (model FLOPs per ``mllm.flops.FORMULA``, against the bf16 peak
of the device from ``mllm.flops.GPU_SPECS`` or ``--peak-tflops``), peak memory
(``torch.cuda.max_memory_allocated`` during the timed steps) and, for decoding, tokens/s against the HBM
roofline (weight + KV-cache bytes per token / bandwidth). A final table sums up; ``--json`` writes it.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from mllm import flops  # noqa: E402

PARTS = ("train", "qlora", "decode")
TIMEOUTS = {"train": 200, "qlora": 130, "decode": 110}  # seconds; the whole run stays under --budget
GiB = 1024 ** 3


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, 1 step: setup and accounting only")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--preset", default=None, help="default: llava-next-7b (tiny with --dry-run)")
    p.add_argument("--llm-layers", type=int, default=None, help="decoder layers (default: the preset's, or "
                   "the most that fit)")
    p.add_argument("--batch-size", type=int, default=4, help="samples per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per layout, after one warm-up step")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens to decode")
    p.add_argument("--attn", default="auto", choices=("auto", "sdpa", "flash_attention_2", "eager"),
                   help="LLM attention (auto: flash_attention_2 if flash-attn is importable on CUDA, else sdpa)")
    p.add_argument("--zero", default="auto", choices=("auto", "3", "none"),
                   help="train part: DeepSpeed ZeRO-3 (auto: when deepspeed is importable and on CUDA)")
    p.add_argument("--decode-source", default="export", choices=("export", "model"))
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak (default: by device name)")
    p.add_argument("--hbm-gbps", type=float, default=None, help="HBM bandwidth in GB/s (default: by device name)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together")
    for part, t in TIMEOUTS.items():
        p.add_argument(f"--timeout-{part}", type=float, default=t, help=f"seconds for the {part} part")
    p.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                   help="each part in its own process (default on CUDA)")
    p.add_argument("--inline", dest="isolate", action="store_false", help="all parts in this process")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # a child process runs one part
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.preset is None:
        args.preset = "tiny" if args.dry_run else "llava-next-7b"
    if args.dry_run:
        args.steps, args.new_tokens = 1, min(args.new_tokens, 8)
    if args.batch_size < 1 or args.steps < 1 or args.new_tokens < 2:
        p.error("--batch-size and --steps must be >= 1, --new-tokens >= 2")
    args.device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if args.isolate is None:
        args.isolate = args.device == "cuda"
    return args


def device_specs(args) -> Dict[str, Any]:
    """Device name, bf16 peak TFLOP/s and HBM GB/s (flags first, then the table; None when unknown)."""
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    table = flops.gpu_specs(name) or (None, None)
    return {"name": name, "peak_tflops": args.peak_tflops or table[0], "hbm_gbps": args.hbm_gbps or table[1],
            "source": "flags" if args.peak_tflops else ("table" if table[0] else "unknown")}


def attn_impl(args) -> str:
    if args.attn != "auto":
        return args.attn
    return "flash_attention_2" if args.device == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"


def build_model(args, llm_layers: Optional[int] = None):
    from mllm.model import MultimodalLM
    from mllm.presets import get_preset, offline

    cfg = offline(get_preset(args.preset))
    if llm_layers:
        cfg.llm.config["num_hidden_layers"] = llm_layers
    cfg.llm.dtype = "bfloat16"
    cfg.llm.attn_implementation = attn_impl(args)
    torch.manual_seed(args.seed)
    with torch.device(args.device):  # random init straight on the GPU: seconds, not minutes, for 7B
        model = MultimodalLM.build(cfg)
    return model.to(torch.bfloat16)


def make_samples(model, n: int, seed: int) -> List[Dict[str, Any]]:
    """LLaVA-665K-like: 90% one image (300-1000 px, aspect 1:2-2:1), 10% text-only; answers mostly short VQA,
    25% long conversations; each image's true number of <image> tokens; lengths capped at max_length."""
    rng = random.Random(seed)
    g = model.geometry
    S, max_len = g.tile_size, model.config.max_length
    gen = torch.Generator().manual_seed(seed)
    tile = torch.randn(3, S, S, generator=gen)
    out = []
    for _ in range(n):
        text = rng.randint(8, 60) + (rng.randint(200, 1500) if rng.random() < 0.25 else rng.randint(2, 40))
        sizes, n_img = [], 0
        if rng.random() < 0.9:
            w = rng.randint(300, 1000)
            h = max(1, int(w * 2 ** rng.uniform(-1, 1)))
            sizes, n_img = [(h, w)], g.num_image_tokens((h, w))
        text = max(4, min(text, max_len - n_img))
        ids = torch.tensor([rng.randrange(4, 1000) for _ in range(text)])
        ids = torch.cat([ids[:2], torch.full((n_img,), model.image_token_id), ids[2:]])
        labels = ids.clone()
        labels[: 2 + n_img + text // 3] = -100  # loss on the answer part only
        pixels = [tile.expand(g.num_tiles(hw), 3, S, S).contiguous() for hw in sizes]
        out.append({"input_ids": ids, "labels": labels, "pixel_values": pixels, "image_sizes": sizes,
                    "length": int(ids.shape[0])})
    return out


def layouts(model, samples, batch_size: int, steps: int) -> Dict[str, List[Dict[str, Any]]]:
    """The same samples per step, padded and packed (rows of max_length)."""
    from data_pipelines.collate import PackingCollator, PaddingCollator

    pad = model.tokenizer.pad_token_id
    groups = [samples[k * batch_size:(k + 1) * batch_size] for k in range(steps + 1)]  # +1: warm-up
    return {"padded": [PaddingCollator(pad)(g) for g in groups],
            "packed": [PackingCollator(model.config.max_length, pad)(g) for g in groups]}, groups


def shapes_of(model):
    llm = flops.decoder_shape(model.config.llm.config, vocab=model.llm.get_output_embeddings().weight.shape[0])
    tower = flops.tower_shape(model.config.vision)
    conn = sum(p.numel() for p in model.connector.parameters() if p.dim() == 2)
    return llm, tower, conn


def group_flops(model, group, passes, extra: int = 0) -> float:
    llm, tower, conn = shapes_of(model)
    segments = [s["length"] for s in group]
    tiles = sum(model.geometry.num_tiles(hw) for s in group for hw in s["image_sizes"])
    return flops.step_flops(llm, segments, tower=tower, tiles=tiles, connector_params=conn, passes=passes,
                            extra_trained_params=extra)["total"]


def to_device(batch: Dict[str, Any], device: str) -> Dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(step, batches, device: str) -> Dict[str, float]:
    """One warm-up step, then the timed ones; seconds and peak memory of the timed steps."""
    step(to_device(batches[0], device))
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for b in batches[1:]:
        step(to_device(b, device))
    sync(device)
    peak = torch.cuda.max_memory_allocated() / GiB if device == "cuda" else float("nan")
    return {"seconds": time.perf_counter() - t0, "peak_gib": peak}


def layout_stats(batch_list, group_list, model) -> Dict[str, float]:
    real = sum(s["length"] for g in group_list[1:] for s in g)
    cells = sum(b["input_ids"].numel() for b in batch_list[1:])
    return {"real_tokens": real, "pad_fraction": 1 - real / cells}


def plan_layers(args, model_params: int, layer_params: int, layers: int, zero: bool, tokens: int,
                hidden: int, vocab: int) -> tuple:
    """Decoder layers to build: the preset's if the estimate fits 92% of the GPU, else the most that do."""
    if args.llm_layers or args.device != "cuda":
        return args.llm_layers or layers, None
    per_weight = 16 if zero else 8  # ZeRO-3 mixed precision: bf16 param + grad, fp32 master + Adam m, v
    total = torch.cuda.get_device_properties(0).total_memory
    fixed = per_weight * (model_params - layers * layer_params) + tokens * vocab * 10 + 6 * GiB
    fit = flops.fit_layers(0.92 * total, fixed, per_weight * layer_params + tokens * hidden * 2, layers)
    if fit >= layers:
        return layers, None
    return max(fit, 1), (f"the estimated memory of all {layers} layers exceeds 92% of {total / GiB:.0f} GiB: "
                         f"built with {max(fit, 1)} decoder layers (the largest shape that fits)")


def part_train(args) -> Dict[str, Any]:
    from mllm.attention import use_packed_attention
    from mllm.presets import get_preset

    use_zero = args.zero == "3" or (args.zero == "auto" and args.device == "cuda"
                                    and importlib.util.find_spec("deepspeed") is not None)
    notes = []
    if args.zero == "auto" and not use_zero:
        notes.append("no ZeRO-3 (needs deepspeed and CUDA): plain AdamW, bf16 states")
    arch = flops.decoder_shape(get_preset(args.preset).llm.config)
    n_est = arch.layers * arch.layer_params + 2 * arch.hidden * arch.vocab + 330_000_000  # + tower/connector
    layers, note = plan_layers(args, n_est, arch.layer_params, arch.layers, use_zero,
                               args.batch_size * get_preset(args.preset).max_length, arch.hidden, arch.vocab)
    if note:
        notes.append(note)
    model = build_model(args, layers)
    # packed rows attend per sample (sdpa -> sdpa_packed; flash varlen as is); padded batches keep plain sdpa
    packed_attn = use_packed_attention(model.llm)
    model.gradient_checkpointing_enable()
    model.train()
    samples = make_samples(model, args.batch_size * (args.steps + 1), args.seed)
    batches, groups = layouts(model, samples, args.batch_size, args.steps)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    # before ZeRO-3 partitions the weights (a partitioned parameter's shape reads 0)
    model_flops = sum(group_flops(model, g, flops.TRAIN_FULL) for g in groups[1:])
    opt = torch.optim.AdamW(params, lr=1e-5)
    if use_zero:
        engine = zero3_engine(model, opt)

        def step(b):
            loss = engine(**b).loss
            engine.backward(loss)
            engine.step()
    else:
        def step(b):
            opt.zero_grad(set_to_none=True)
            model(**b).loss.backward()
            opt.step()
    out = {"params_b": n_params / 1e9, "llm_layers": model.llm.config.num_hidden_layers,
           "attention": attn_impl(args), "packed_attention": packed_attn,
           "optimizer": "ZeRO-3 (DeepSpeed)" if use_zero else "AdamW",
           "notes": notes, "model_flops": model_flops}
    for name, rows in batches.items():
        out[name] = {**time_steps(step, rows, args.device), **layout_stats(rows, groups, model)}
    return out


def zero3_engine(model, optimizer):
    """DeepSpeed ZeRO-3 on one process, with the config the training stages use ("auto" entries filled)."""
    import deepspeed

    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(29500 + os.getpid() % 1000)}.items():
        os.environ.setdefault(k, v)
    with open(os.path.join(ROOT, "train_stages", "zero3.json")) as f:
        cfg = json.load(f)
    h = model.llm.config.hidden_size
    auto = {"reduce_bucket_size": h * h, "stage3_prefetch_bucket_size": int(0.9 * h * h),
            "stage3_param_persistence_threshold": 10 * h}
    cfg["zero_optimization"].update({k: v for k, v in auto.items() if cfg["zero_optimization"].get(k) == "auto"})
    cfg.update({"bf16": {"enabled": True}, "fp16": {"enabled": False}, "train_micro_batch_size_per_gpu": 1,
                "train_batch_size": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
                "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9})
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    return engine


def part_qlora(args) -> Dict[str, Any]:
    if args.device == "cuda" and importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "bitsandbytes is not importable"}
    from train_stages.freeze import apply_policy
    from train_stages.specs import ModuleSpec, TrainConfig

    model = build_model(args, args.llm_layers)
    cfg = TrainConfig(stage="instruct", output_dir=tempfile.gettempdir(), model=args.preset, bf16=True,
                      modules={"llm": ModuleSpec("qlora"), "vision": ModuleSpec("frozen"),
                               "connector": ModuleSpec("full")})
    groups_p = apply_policy(model, cfg)
    model.gradient_checkpointing_enable(vision=False)
    model.train()
    lora = sum(p.numel() for p in groups_p["llm"])
    opt = torch.optim.AdamW([p for ps in groups_p.values() for p in ps], lr=1e-4)

    def step(b):
        opt.zero_grad(set_to_none=True)
        model(**b).loss.backward()
        opt.step()

    samples = make_samples(model, args.batch_size * (args.steps + 1), args.seed)
    batches, groups = layouts(model, samples, args.batch_size, args.steps)
    res = {**time_steps(step, batches["padded"], args.device), **layout_stats(batches["padded"], groups, model)}
    res["model_flops"] = sum(group_flops(model, g, flops.TRAIN_QLORA, extra=lora) for g in groups[1:])
    return {"padded": res, "trainable_m": (lora + sum(p.numel() for p in groups_p["connector"])) / 1e6}


def part_decode(args) -> Dict[str, Any]:
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from data_pipelines.processor import MultimodalProcessor
    from mllm.app.export import export_model
    from mllm.app.export.verify import default_image, default_messages

    model = build_model(args, args.llm_layers).eval()
    llm, _, _ = shapes_of(model)
    image = default_image(model.geometry.tile_size)
    ours = MultimodalProcessor.for_model(model, num_threads=1)
    with tempfile.TemporaryDirectory(prefix="gpu_check_export_") as out:
        if args.decode_source == "export":
            t0 = time.perf_counter()
            export_model(model, out, log=None)
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()
            backend = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}
            processor = AutoProcessor.from_pretrained(out, **backend)
            model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.bfloat16, device_map=args.device)
            model.eval()
            export_s = time.perf_counter() - t0
            inputs = processor(images=[image], text=ours.render(default_messages()), add_special_tokens=False,
                               return_tensors="pt")
        else:
            export_s = None
            enc = ours.encode_prompt(default_messages(), [image])
            ids = torch.tensor([enc.input_ids])
            inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), **enc.model_inputs())
    inputs = to_device(dict(inputs), args.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    prompt = int(inputs["input_ids"].shape[1])

    def gen(n):
        sync(args.device)
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        sync(args.device)
        return time.perf_counter() - t

    gen(2)  # warm-up
    t1, tn = gen(1), gen(args.new_tokens)
    tps = (args.new_tokens - 1) / max(tn - t1, 1e-9)
    context = prompt + args.new_tokens / 2
    return {"source": args.decode_source, "export_load_s": export_s, "prompt_tokens": prompt,
            "prefill_s": t1, "tokens_per_s": tps,
            "bytes_per_token": flops.decode_bytes_per_token(llm, context),
            "peak_gib": torch.cuda.max_memory_allocated() / GiB if args.device == "cuda" else float("nan")}


PART_FNS = {"train": part_train, "qlora": part_qlora, "decode": part_decode}


@contextlib.contextmanager
def time_limit(seconds: float):
    def stop(signum, frame):
        raise TimeoutError(f"ran past its {seconds:.0f}s limit")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_inline(name: str, args, timeout: float) -> Dict[str, Any]:
    try:
        with time_limit(timeout):
            return PART_FNS[name](args)
    except Exception as e:  # a part's failure is a row of the table, not the end of the check
        return {"error": f"{type(e).__name__}: {e}"[:300]}


def run_isolated(name: str, argv: List[str], timeout: float) -> Dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--part", name, "--result", result]
    try:
        sink = sys.stderr.fileno()  # the child's output is progress: keep this process's stdout for the table
    except (AttributeError, OSError):
        sink = None
    try:
        proc = subprocess.run(cmd, timeout=timeout, stdout=sink, stderr=subprocess.STDOUT if sink else None)
        if os.path.getsize(result):
            with open(result) as f:
                return json.load(f)
        return {"error": f"exited with code {proc.returncode} and no result"}
    except subprocess.TimeoutExpired:
        return {"error": f"ran past its {timeout:.0f}s limit"}
    finally:
        os.remove(result)


def _fmt(v, spec=".1f", unit=""):
    return "-" if v is None or v != v else f"{v:{spec}}{unit}"


def print_report(results: Dict[str, Dict[str, Any]], spec: Dict[str, Any], args) -> List[str]:
    """The final summary table (also returned as lines)."""
    peak, hbm = spec["peak_tflops"], spec["hbm_gbps"]
    lines = [f"GPU check on {spec['name']}: bf16 peak {_fmt(peak, '.0f')} TFLOP/s, HBM {_fmt(hbm, '.0f')} GB/s "
             f"({spec['source']}); preset {args.preset}{' (dry run)' if args.dry_run else ''}; torch "
             f"{torch.__version__}",
             f"MFU = model FLOPs / seconds / peak, {flops.FORMULA}",
             "decode roofline = HBM bytes/s / ((decoder weights + one embedding row) * 2 B + KV-cache bytes per "
             "token * mean context)"]
    tr = results.get("train", {})
    if "params_b" in tr:
        lines.append(f"train: {tr['params_b']:.3g}B params, {tr['llm_layers']} decoder layers, attention "
                     f"{tr['attention']} (packed rows: {tr.get('packed_attention', '-')}), {tr['optimizer']}, "
                     "activation checkpointing (recompute not counted)")
    for name, r in results.items():
        lines += [f"note ({name}): {n}" for n in r.get("notes", [])]
    rows = [("part", "layout", "tokens/s", "MFU", "peak GiB", "pad", "detail")]
    for name, r in results.items():
        status = r.get("error") or r.get("skipped")
        if status:
            rows.append((name, "-", "-", "-", "-", "-", f"{'skipped' if 'skipped' in r else 'FAILED'}: {status}"))
            continue
        if name == "decode":
            roof = flops.roofline_tokens_per_s(r["bytes_per_token"], hbm * 1e9) if hbm else None
            share = f", {100 * r['tokens_per_s'] / roof:.0f}% of roofline {roof:.0f} tok/s" if roof else ""
            rows.append((name, f"batch 1 ({r['source']})", _fmt(r["tokens_per_s"]), "-", _fmt(r["peak_gib"]),
                         "-", f"prompt {r['prompt_tokens']} tok, prefill {r['prefill_s']:.2f}s, "
                              f"{r['bytes_per_token'] / 1e9:.2f} GB/token{share}"))
            continue
        for layout in ("padded", "packed"):
            if layout not in r:
                continue
            m = r[layout]
            fl = r.get("model_flops", m.get("model_flops"))
            tps = m["real_tokens"] / m["seconds"]
            util = flops.mfu(fl, m["seconds"], peak) if peak else None
            rows.append((name, layout, _fmt(tps), _fmt(util and 100 * util, ".1f", "%"), _fmt(m["peak_gib"]),
                         f"{100 * m['pad_fraction']:.0f}%", f"{m['real_tokens']} real tokens in "
                         f"{m['seconds']:.2f}s, {fl / 1e12:.3g} TFLOP"))
        if "padded" in r and "packed" in r:
            ratio = r["padded"]["seconds"] / r["packed"]["seconds"]
            rows.append((name, "packed/padded", f"{ratio:.2f}x", "-", "-", "-", "same samples"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    table = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    table.insert(1, "-+-".join("-" * w for w in widths))
    lines += table
    lines.append("wall seconds per part: " + ", ".join(f"{k} {v.get('wall_s', 0):.0f}" for k, v in results.items()))
    print("\n".join(lines), flush=True)
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.part:  # child process: one part, its result as JSON
        res = run_inline(args.part, args, getattr(args, f"timeout_{args.part}"))
        with open(args.result, "w") as f:
            json.dump(res, f)
        return 0
    spec = device_specs(args)
    start, results = time.perf_counter(), {}
    for name in args.parts:
        left = args.budget - (time.perf_counter() - start)
        timeout = min(getattr(args, f"timeout_{name}"), left)
        print(f"[{name}] running (limit {timeout:.0f}s) ...", file=sys.stderr, flush=True)
        if left < 10:
            results[name] = {"error": f"not run: the {args.budget:.0f}s budget is spent"}
        elif args.isolate:
            results[name] = run_isolated(name, argv, timeout)
        else:
            results[name] = run_inline(name, args, timeout)
        results[name]["wall_s"] = time.perf_counter() - start - (args.budget - left)
    lines = print_report(results, spec, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": spec, "results": results, "summary": lines}, f, indent=2, default=str)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
