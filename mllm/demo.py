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

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

log = logging.getLogger("mllm.demo")


@dataclass
class DemoPlan:
    n_train: int = 2000
    n_test: int = 200
    # the tower sees every AnyRes tile in encoder pretraining (kinds are only visible at tile resolution)
    encoder_epochs: int = 12
    # the LLM is random and frozen in stage 1, so alignment can only shape the connector's output scale:
    # half an epoch is enough for that
    align_epochs: float = 0.5
    # stage 2 trains on vqa_dialog_train.json: a dozen supervised answers per image in one sequence
    multitask_epochs: float = 1.0
    instruct_epochs: float = 0.5
    instruct_dialogs: int = 600  # stage-2 dialogs mixed into stage 3
    generation: bool = True  # the gen step (issue 7): train the DiT head, sample held-out prompts, score
    batch_size: int = 16
    max_steps: int = -1  # > 0: cap every stage (smoke runs)
    eval_batch_size: int = 16
    seed: int = 0
    bf16: bool = True  # CPU autocast: ~1.7x faster steps for the tiny model
    # torch threads: small CPU ops with 2 OpenMP threads on 2 shared cores can run 10x slower (spin-waits
    # starve each other, measured here); one thread is the predictable choice. MLLM_THREADS overrides.
    threads: int = 1


QUICK = DemoPlan(n_train=64, n_test=16, encoder_epochs=1, align_epochs=1, multitask_epochs=1, instruct_epochs=1,
                 batch_size=8, max_steps=4)  # the gen step runs its own smoke plan (mllm.demo_gen.QUICK_GEN)


def _stage_config(stage: str, out: str, init_from: str, data: List[Dict], plan: DemoPlan, lr: float,
                  epochs: float, **extra):
    from train_stages.specs import TrainConfig

    return TrainConfig.from_dict(dict(
        stage=stage, output_dir=os.path.join(out, stage), init_from=init_from, data=data,
        deepspeed="none", per_device_train_batch_size=plan.batch_size, learning_rate=lr,
        num_train_epochs=epochs, max_steps=plan.max_steps, warmup_ratio=0.05, logging_steps=10,
        save_steps=0, seed=plan.seed, bf16=plan.bf16, **extra), source=f"demo:{stage}")


def run_demo(out: str, plan: Optional[DemoPlan] = None) -> Dict:
    from data_pipelines.shapes import make_shapes
    from train_stages.encoder_pretrain import EncoderPretrainConfig, pretrain_encoder
    from train_stages.runner import run_stage

    import torch

    plan = plan or DemoPlan()
    torch.set_num_threads(int(os.environ.get("MLLM_THREADS", plan.threads)))
    os.makedirs(out, exist_ok=True)
    data_dir = os.path.join(out, "data")
    rows = []
    t_all = time.time()

    t = time.time()
    make_shapes(data_dir, seed=plan.seed, n_train=plan.n_train, n_test=plan.n_test, overwrite=True)
    rows.append({"step": "make Shapes world", "seconds": time.time() - t, "loss": None})

    t = time.time()
    enc = pretrain_encoder(EncoderPretrainConfig(
        data=os.path.join(data_dir, "captions_train.json"), output_dir=os.path.join(out, "encoder"),
        epochs=plan.encoder_epochs, seed=plan.seed))
    rows.append({"step": "encoder pretraining", "seconds": time.time() - t, "loss": enc["loss_last_epoch"]})

    stages = [
        ("align", os.path.join(out, "encoder"), "captions_train.json", 1e-3, plan.align_epochs, {}),
        # the tiny tower was pretrained on captions only: let it keep learning while the LLM learns to ask it
        ("multitask", os.path.join(out, "align"), "vqa_dialog_train.json", 1e-3, plan.multitask_epochs,
         {"modules": {"vision": {"mode": "full", "lr": 1e-3}}}),
        # LLaVA's instruct mix keeps VQA data in it; without some dialogs the short answers are forgotten
        ("instruct", os.path.join(out, "multitask"), "instruct_train.json", 3e-4, plan.instruct_epochs,
         {"extra_data": [{"path": "vqa_dialog_train.json", "max_samples": plan.instruct_dialogs}]}),
    ]
    for stage, init_from, data_file, lr, epochs, extra in stages:
        t = time.time()
        sources = [{"path": os.path.join(data_dir, data_file)}]
        for src in extra.pop("extra_data", []):
            sources.append({**src, "path": os.path.join(data_dir, src["path"])})
        cfg = _stage_config(stage, out, init_from, sources, plan, lr, epochs, **extra)
        s = run_stage(cfg)
        rows.append({"step": f"train: {stage}", "seconds": time.time() - t, "loss": s.get("last_loss")})

    from mllm.cli import main as cli

    t = time.time()
    eval_dir = os.path.join(out, "eval_mmbench")
    rc = cli(["eval", "mmbench", "--model", os.path.join(out, "instruct"), "--data",
              os.path.join(data_dir, "mmbench_dev.tsv"), "--out", eval_dir,
              "--batch-size", str(plan.eval_batch_size)])
    if rc != 0:
        raise RuntimeError(f"mllm eval mmbench failed with exit code {rc}")
    with open(os.path.join(eval_dir, "scores.json")) as f:
        scores = json.load(f)
    rows.append({"step": "eval: MMBench (Shapes DEV)", "seconds": time.time() - t, "loss": None})

    t = time.time()
    from mllm.export import export_model

    report = export_model(os.path.join(out, "instruct"), os.path.join(out, "hf_export"), verify=True,
                          overwrite=True, log=log.info)
    rows.append({"step": f"export ({report.path}) + verify", "seconds": time.time() - t, "loss": None})

    t = time.time()
    chat = _sample_chat(out, data_dir)
    rows.append({"step": "chat: one turn", "seconds": time.time() - t, "loss": None})

    generation = None
    if plan.generation:
        from mllm.demo_gen import run_gen_step

        row, metrics = run_gen_step(out, data_dir, os.path.join(out, "instruct"), plan)
        rows.append(row)
        generation = {k: metrics[k] for k in ("everything_accuracy", "colour_shape_accuracy", "colour_accuracy",
                                              "shape_accuracy", "position_accuracy", "count_accuracy", "fd",
                                              "fd_real_vs_real")
                      if k in metrics}

    summary = {
        "total_seconds": round(time.time() - t_all, 1),
        "generation": generation,
        "export": {"path": report.path, "logits_max_abs_diff": report.verify.max_abs_diff,
                   "greedy_identical": report.verify.tokens_ours == report.verify.tokens_theirs},
        "chat": chat,
        "circular_accuracy": scores["circular"]["Overall"],
        "vanilla_accuracy": scores["vanilla"]["Overall"],
        "steps": [{**r, "seconds": round(r["seconds"], 1)} for r in rows],
        "model": os.path.join(out, "instruct"),
    }
    with open(os.path.join(out, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(format_summary(summary))
    return summary


def _sample_chat(out: str, data_dir: str) -> Dict:
    """Ask the trained model about the first held-out image, through the chat session API."""
    from mllm.chat import ChatSession, load_backend

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
    ex = summary.get("export")
    if ex:
        lines.append(f"export: {ex['path']}, logits max abs diff {ex['logits_max_abs_diff']:.2e}, "
                     f"greedy identical: {ex['greedy_identical']}")
    gen = summary.get("generation")
    if gen:
        lines.append(f"generation (held-out prompts): everything the prompt says {gen.get('everything_accuracy', 0):.3f}, "
                     f"colour+shape {gen['colour_shape_accuracy']:.3f}, "
                     f"FD {gen['fd']:.3g} (real vs real {gen['fd_real_vs_real']:.3g})")
    chat = summary.get("chat")
    if chat:
        lines.append(f"chat: [{chat['image']}] {chat['question']} -> {chat['answer']!r} (truth: {chat['truth']})")
    lines.append(f"model: {summary['model']}")
    return "\n".join(lines)
