"""The embedded default, end to end on a laptop CPU: Shapes world -> encoder pretraining -> align ->
multitask -> instruct -> MMBench (CircularEval) on the held-out Shapes DEV TSV -> export to a native
transformers checkpoint (verified) -> a sample chat turn -> the image-generation head (``gen`` stage on the
instruct model, images for held-out prompts, generation_metrics.json).

    mllm demo --out demo_out            # everything lands in demo_out/, a summary table is printed
    mllm demo --out demo_out --quick    # a smoke run (few steps; the accuracy goal does not apply)

Each stage reads the previous stage's output directory (``init_from``), exactly as a user would chain
``mllm train`` calls; the stage configs written into each directory can be rerun by hand.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from data_pipelines.shapes import make_shapes
from mllm.app.chat import ChatSession, load_backend
from mllm.app.cli import main as cli
from mllm.app.demo_gen import run_gen_step
from mllm.app.demo_report import blank_mmbench_tsv, plot_categories, plot_learning_curves, read_loss_curve
from mllm.app.export import export_model
from train_stages.encoder_pretrain import EncoderPretrainConfig, pretrain_encoder
from train_stages.runner import run_stage
from train_stages.specs import TrainConfig
from train_stages.text_pretrain import TextPretrainConfig, text_pretrain

log = logging.getLogger("mllm.app.demo")


@dataclass
class DemoPlan:
    n_train: int = 2000
    n_test: int = 200
    # the tiny template: vicuna_v1 without the 27-token system sentence (nothing to gain from it when training
    # from scratch); the connector's output layer starts at the token embeddings' scale (std 0.02)
    model_overrides: Tuple[str, ...] = ("chat_template=vicuna_v1_short", "connector.output_std=0.02")
    # the tower sees every AnyRes tile in encoder pretraining (kinds are only visible at tile resolution);
    # batch 16 (the encoder's default): 24 epochs = 3000 steps, frozen-feature probe 0.975 held-out (every
    # category >= 0.95 but OCR 0.71) against 0.79 after 12 epochs, for ~100-190 s more on 2 shared cores
    encoder_epochs: int = 24
    # text pretraining of the LLM on the world's language: descriptions in context -> answers. 80 steps of 16
    # teach the template, the words and the answer priors (held-out loss ~0.7); reading answers out of the
    # description had not started after 100 steps, so more steps are not worth their seconds here
    text_steps: int = 80
    text_batch_size: int = 16
    text_lr: float = 2e-3
    # stage 1 aligns the connector to an LLM that knows the words
    align_epochs: float = 0.5
    align_lr: float = 1e-3
    # stage 2 trains on vqa_dialog_train.json: a dozen supervised answers per image in one sequence
    multitask_epochs: float = 0.75  # the text step's seconds come out of this stage
    multitask_lr: float = 1e-3
    vision_lr: float = 1e-3
    instruct_epochs: float = 0.5
    instruct_lr: float = 3e-4
    instruct_dialogs: int = 600  # stage-2 dialogs mixed into stage 3
    warmup_ratio: float = 0.05  # then cosine decay, per stage
    max_grad_norm: float = 1.0
    generation: bool = True  # the gen step: train the DiT head, sample held-out prompts, score
    blank_baseline: bool = True  # also score the same model on blank images
    batch_size: int = 16
    max_steps: int = -1  # > 0: cap every stage (smoke runs)
    eval_batch_size: int = 16
    seed: int = 0
    bf16: bool = True  # CPU autocast: ~1.7x faster steps for the tiny model
    # torch threads: small CPU ops with 2 OpenMP threads on 2 shared cores can run 10x slower (spin-waits
    # starve each other, measured here); one thread is the predictable choice. MLLM_THREADS overrides.
    threads: int = 1
    # steps whose outputs already exist in ``out`` and are reused as they are ("world", "encoder", "text"):
    # for recipe experiments that change only later stages
    reuse: Tuple[str, ...] = ()


QUICK = DemoPlan(n_train=64, n_test=16, encoder_epochs=1, text_steps=4, text_batch_size=8, align_epochs=1,
                 multitask_epochs=1, instruct_epochs=1, batch_size=8,
                 max_steps=4)  # the gen step runs its own smoke plan (mllm.app.demo_gen.QUICK_GEN)


def _stage_config(stage: str, out: str, init_from: str, data: List[Dict], plan: DemoPlan, lr: float,
                  epochs: float, **extra):
    return TrainConfig.from_dict(dict(
        stage=stage, output_dir=os.path.join(out, stage), init_from=init_from, data=data,
        deepspeed="none", per_device_train_batch_size=plan.batch_size, learning_rate=lr,
        num_train_epochs=epochs, max_steps=plan.max_steps, warmup_ratio=plan.warmup_ratio,
        max_grad_norm=plan.max_grad_norm, logging_steps=5, save_steps=0, seed=plan.seed, bf16=plan.bf16,
        **extra), source=f"demo:{stage}")


def _evaluate(out: str, model: str, tsv: str, name: str, plan: DemoPlan) -> Dict:
    eval_dir = os.path.join(out, name)
    rc = cli(["eval", "mmbench", "--model", model, "--data", tsv, "--out", eval_dir,
              "--batch-size", str(plan.eval_batch_size), "--overwrite"])
    if rc != 0:
        raise RuntimeError(f"mllm eval mmbench failed with exit code {rc} on {tsv}")
    with open(os.path.join(eval_dir, "scores.json")) as f:
        return json.load(f)


def run_demo(out: str, plan: Optional[DemoPlan] = None) -> Dict:
    import torch

    plan = plan or DemoPlan()
    torch.set_num_threads(int(os.environ.get("MLLM_THREADS", plan.threads)))
    os.makedirs(out, exist_ok=True)
    data_dir = os.path.join(out, "data")
    rows = []
    t_all = time.time()

    t = time.time()
    if "world" not in plan.reuse:
        make_shapes(data_dir, seed=plan.seed, n_train=plan.n_train, n_test=plan.n_test, overwrite=True)
    rows.append({"step": "make Shapes world", "seconds": time.time() - t, "loss": None})

    t = time.time()
    enc_loss = None
    if "encoder" not in plan.reuse:
        enc = pretrain_encoder(EncoderPretrainConfig(
            data=os.path.join(data_dir, "captions_train.json"), output_dir=os.path.join(out, "encoder"),
            model_overrides=list(plan.model_overrides), epochs=plan.encoder_epochs, seed=plan.seed))
        enc_loss = enc.get("loss_last_epoch")
    rows.append({"step": "tower pretraining", "seconds": time.time() - t, "loss": enc_loss})

    t = time.time()
    text_summary = None
    if "text" not in plan.reuse:
        text_summary = text_pretrain(TextPretrainConfig(
            scenes=os.path.join(data_dir, "scenes_train.jsonl"), output_dir=os.path.join(out, "text"),
            init_from=os.path.join(out, "encoder"), steps=plan.text_steps, batch_size=plan.text_batch_size,
            learning_rate=plan.text_lr, max_grad_norm=plan.max_grad_norm, bf16=plan.bf16, seed=plan.seed,
            eval_every=0 if plan.max_steps > 0 else 100))
    rows.append({"step": "LLM text pretraining", "seconds": time.time() - t,
                 "loss": (text_summary or {}).get("last_loss")})

    stages = [
        ("align", os.path.join(out, "text"), "captions_train.json", plan.align_lr, plan.align_epochs, {}),
        # the tiny tower was pretrained without the LLM: let it keep learning while the LLM learns to ask it
        ("multitask", os.path.join(out, "align"), "vqa_dialog_train.json", plan.multitask_lr,
         plan.multitask_epochs, {"modules": {"vision": {"mode": "full", "lr": plan.vision_lr}}}),
        # LLaVA's instruct mix keeps VQA data in it; without some dialogs the short answers are forgotten
        ("instruct", os.path.join(out, "multitask"), "instruct_train.json", plan.instruct_lr, plan.instruct_epochs,
         {"extra_data": [{"path": "vqa_dialog_train.json", "max_samples": plan.instruct_dialogs}]}),
    ]
    stage_summaries = {}
    for stage, init_from, data_file, lr, epochs, extra in stages:
        t = time.time()
        sources = [{"path": os.path.join(data_dir, data_file)}]
        for src in extra.pop("extra_data", []):
            sources.append({**src, "path": os.path.join(data_dir, src["path"])})
        cfg = _stage_config(stage, out, init_from, sources, plan, lr, epochs, **extra)
        s = run_stage(cfg)
        stage_summaries[stage] = s
        rows.append({"step": f"train: {stage}", "seconds": time.time() - t, "loss": s.get("last_loss")})

    t = time.time()
    model_dir = os.path.join(out, "instruct")
    scores = _evaluate(out, model_dir, os.path.join(data_dir, "mmbench_dev.tsv"), "eval_mmbench", plan)
    rows.append({"step": "eval: MMBench (Shapes DEV)", "seconds": time.time() - t, "loss": None})
    blank = None
    if plan.blank_baseline:

        t = time.time()
        blank_tsv = os.path.join(data_dir, "mmbench_dev_blank.tsv")
        blank_mmbench_tsv(os.path.join(data_dir, "mmbench_dev.tsv"), blank_tsv)
        blank = _evaluate(out, model_dir, blank_tsv, "eval_mmbench_blank", plan)
        rows.append({"step": "eval: same, blank images", "seconds": time.time() - t, "loss": None})

    t = time.time()
    report = export_model(model_dir, os.path.join(out, "hf_export"), verify=True, overwrite=True, log=log.info)
    rows.append({"step": f"export ({report.path}) + verify", "seconds": time.time() - t, "loss": None})

    t = time.time()
    chat = _sample_chat(out, data_dir)
    rows.append({"step": "chat: one turn", "seconds": time.time() - t, "loss": None})
    understanding_s = time.time() - t_all

    generation = None
    if plan.generation:
        row, metrics = run_gen_step(out, data_dir, model_dir, plan)
        rows.append(row)
        generation = {k: metrics[k] for k in ("everything_accuracy", "colour_shape_accuracy", "colour_accuracy",
                                              "shape_accuracy", "position_accuracy", "count_accuracy", "fd",
                                              "fd_real_vs_real", "cli_example")
                      if k in metrics}

    figures = _figures(out, t_all, scores, blank)
    summary = {
        "total_seconds": round(time.time() - t_all, 1),
        "understanding_seconds": round(understanding_s, 1),
        "generation": generation,
        "export": {"path": report.path, "logits_max_abs_diff": report.verify.max_abs_diff,
                   "greedy_identical": report.verify.tokens_ours == report.verify.tokens_theirs},
        "chat": chat,
        "circular_accuracy": scores["circular"]["Overall"],
        "vanilla_accuracy": scores["vanilla"]["Overall"],
        "blank_circular_accuracy": blank["circular"]["Overall"] if blank else None,
        "blank_vanilla_accuracy": blank["vanilla"]["Overall"] if blank else None,
        "categories": {k: {"circular": v, "blank_circular": (blank or {}).get("circular", {}).get(k)}
                       for k, v in scores["circular"].items()},
        "text_pretraining": text_summary,
        "stages": {k: {f: v.get(f) for f in ("steps", "seconds", "first_loss", "last_loss")}
                   for k, v in stage_summaries.items()},
        "figures": figures,
        "steps": [{**r, "seconds": round(r["seconds"], 1)} for r in rows],
        "model": model_dir,
        "plan": dataclasses.asdict(plan),
    }
    with open(os.path.join(out, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(format_summary(summary))
    return summary


def _figures(out: str, t0: float, scores: Dict, blank: Optional[Dict]) -> Dict[str, str]:
    """learning_curves.png in ``out``; categories.png next to the eval's scores.json. Skipped (with a
    warning) when matplotlib is not installed (``pip install mllm[demo]``)."""

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'mllm[demo]'): no figures written")
        return {}
    curves = {name: read_loss_curve(os.path.join(out, name)) for name in ("text", "align", "multitask", "instruct")}
    return {"learning_curves": plot_learning_curves(curves, t0, os.path.join(out, "learning_curves.png")),
            "categories": plot_categories(scores, blank, os.path.join(out, "eval_mmbench", "categories.png"))}


def _sample_chat(out: str, data_dir: str) -> Dict:
    """Ask the trained model about the first held-out image, through the chat session API."""
    with open(os.path.join(data_dir, "scenes_test.jsonl")) as f:
        scene = json.loads(f.readline())
    shape = scene["shapes"][0]
    question = f"What colour is the {shape['kind']}?"
    session = ChatSession(load_backend(os.path.join(out, "instruct")))
    session.attach_image(os.path.join(data_dir, scene["image"]))
    answer = session.ask(question)
    return {"image": scene["image"], "question": question, "answer": answer, "truth": shape["colour"]}


def format_summary(summary: Dict) -> str:
    lines = ["", f"{'step':<30} {'seconds':>8} {'final loss':>11}", "-" * 51]
    for r in summary["steps"]:
        loss = f"{r['loss']:.3f}" if isinstance(r.get("loss"), (int, float)) else ""
        lines.append(f"{r['step']:<30} {r['seconds']:>8.1f} {loss:>11}")
    lines.append("-" * 51)
    lines.append(f"{'total':<30} {summary['total_seconds']:>8.1f}")
    lines.append(f"MMBench (Shapes DEV) circular accuracy: {summary['circular_accuracy']:.3f}   "
                 f"vanilla: {summary['vanilla_accuracy']:.3f}")
    if summary.get("blank_circular_accuracy") is not None:
        lines.append(f"the same model on blank images:   circular {summary['blank_circular_accuracy']:.3f}   "
                     f"vanilla: {summary['blank_vanilla_accuracy']:.3f}")
    if summary.get("categories"):
        lines.append(f"{'circular accuracy by group / category':<40} {'ours':>6} {'blank':>6}")
        for name, c in summary["categories"].items():
            b = c.get("blank_circular")
            lines.append(f"  {name:<38} {c['circular']:>6.3f} {('%.3f' % b) if b is not None else '-':>6}")
    if summary.get("understanding_seconds") is not None:
        lines.append(f"understanding pipeline (world -> chat): {summary['understanding_seconds']:.0f} s")
    for name, path in (summary.get("figures") or {}).items():
        lines.append(f"figure: {path}")
    ex = summary.get("export")
    if ex:
        lines.append(f"export: {ex['path']}, logits max abs diff {ex['logits_max_abs_diff']:.2e}, "
                     f"greedy identical: {ex['greedy_identical']}")
    gen = summary.get("generation")
    if gen:
        lines.append(f"generation (held-out prompts): everything the prompt says {gen.get('everything_accuracy', 0):.3f}, "
                     f"colour+shape {gen['colour_shape_accuracy']:.3f}, "
                     f"FD {gen['fd']:.3g} (real vs real {gen['fd_real_vs_real']:.3g})")
        if gen.get("cli_example"):
            lines.append(f"mllm generate --prompt {gen['cli_example']['prompt']!r}: checker says "
                         f"{gen['cli_example']['verdict']}")
    chat = summary.get("chat")
    if chat:
        lines.append(f"chat: [{chat['image']}] {chat['question']} -> {chat['answer']!r} (truth: {chat['truth']})")
    lines.append(f"model: {summary['model']}")
    return "\n".join(lines)
