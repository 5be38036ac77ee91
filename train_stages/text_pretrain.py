"""Text pretraining of the LLM on the world's language, for presets whose LLM starts random (``tiny``).

A real recipe starts from an LLM that knows its words; the tiny default builds one here, in seconds, from
the scene metadata of the Shapes world (``scenes_train.jsonl``), before stage 1 aligns the connector to it.
Every sample is a conversation in the model's own chat template, no images:

    context   USER: <full description of a scene>\\n<question> ASSISTANT: <answer> USER: <question> ...
              (the stage-2 dialog of that scene, with the description where the image will be)
    describe  USER: Describe the image. ASSISTANT: <full description>       (the words and their grammar)

The context samples teach what the multimodal stages need most: reading the answer from what came before
the question (which shape is red, what is on the left, how many...). Afterwards the image tokens only have
to "read like" a description. The loss is on the assistant tokens (the template's targets). Short samples
are packed into rows (``PackingCollator``; attention stays inside each sample). Held-out scenes (the last
``heldout`` of the file) measure first-answer accuracy with the description in context and without it
(what the prior alone gets).

    python -m train_stages.text_pretrain --scenes shapes/scenes_train.jsonl --init-from runs/encoder \\
        --out runs/text --steps 300
    mllm train --stage text --config text.yaml        (the fields of TextPretrainConfig)

The output is a full checkpoint (tower and connector as in ``init_from``, the LLM trained) that the align
stage takes as its ``init_from``; ``metrics.jsonl`` holds the loss curve, ``text_pretrain.json`` the summary.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from data_pipelines.collate import PackingCollator, PaddingCollator
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.records import Record
from data_pipelines.shapes.scene import Scene
from data_pipelines.shapes.tasks import describe
from data_pipelines.shapes.turns import dialog
from mllm.attention import use_packed_attention
from mllm.config import apply_overrides
from mllm.model import MultimodalLM
from mllm.presets import get_preset

log = logging.getLogger("mllm.train")
DESCRIBE_PROMPT = "Describe the image."


@dataclass
class TextPretrainConfig:
    scenes: str  # scenes_*.jsonl of the Shapes world (data_pipelines.shapes)
    output_dir: str
    init_from: Optional[str] = None  # a checkpoint (e.g. encoder pretraining's output); None: ``model``
    model: str = "tiny"
    model_overrides: List[str] = field(default_factory=list)
    template: Optional[str] = None  # default: the model's chat template
    steps: int = 300
    batch_size: int = 32  # conversations per step, packed into rows of ``pack_length`` tokens
    pack_length: int = 512
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine decay to this fraction of the peak
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = True
    describe_probability: float = 0.15  # else a context dialog
    max_turns: int = 4  # dialog turns per context sample (~200 tokens; a full dialog is ~500)
    heldout: int = 100  # scenes at the end of the file kept for the held-out probe
    eval_every: int = 100
    seed: int = 0
    num_threads: Optional[int] = None


def load_scenes(path: str):
    scenes = []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    scenes.append(Scene.from_dict(json.loads(line), where=f"{path}:{n}"))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: not a Shapes scene: {e}") from None
    if not scenes:
        raise ValueError(f"{path}: no scenes")
    return scenes


def context_messages(scene, rng: random.Random, max_turns: int, context: bool = True) -> List[Dict[str, str]]:
    """The scene's stage-2 dialog, its first user turn led by the full description (or by nothing)."""

    turns = dialog(scene, rng)[:max_turns]
    lead = describe(scene) + "\n" if context else ""
    msgs = []
    for j, (q, a) in enumerate(turns):
        msgs += [{"role": "user", "content": (lead + q) if j == 0 else q}, {"role": "assistant", "content": a}]
    return msgs


def describe_messages(scene) -> List[Dict[str, str]]:
    return [{"role": "user", "content": DESCRIBE_PROMPT}, {"role": "assistant", "content": describe(scene)}]


def text_sample(builder, scene, rng: random.Random, cfg: TextPretrainConfig, idx: int):
    if rng.random() < cfg.describe_probability:
        msgs = describe_messages(scene)
    else:
        msgs = context_messages(scene, rng, cfg.max_turns)
    return builder.encode_sample(Record(id=f"text{idx}", messages=msgs))


def _lr_at(step: int, cfg: TextPretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def first_answer_accuracy(llm, builder, collate, scenes: Sequence, seed: int, context: bool,
                          max_turns: int = 8, batch: int = 50) -> float:
    """Exact match of the first assistant answer under teacher forcing (= what greedy decoding says)."""

    llm.eval()
    rng = random.Random(seed)
    samples = []
    for i, sc in enumerate(scenes):
        msgs = context_messages(sc, rng, max_turns, context=context)[:2]
        samples.append(builder.encode_sample(Record(id=f"probe{i}", messages=msgs)))
    ok = 0
    for s in range(0, len(samples), batch):
        bt = collate(samples[s:s + batch])
        bt.pop("data_skips", None)
        logits = llm(input_ids=bt["input_ids"], attention_mask=bt["attention_mask"]).logits[:, :-1]
        lab = bt["labels"][:, 1:]
        m = lab != -100
        ok += int(((logits.argmax(-1) == lab) | ~m).all(dim=1).sum())
    llm.train()
    return ok / max(1, len(samples))


def text_pretrain(cfg: TextPretrainConfig, progress: bool = True) -> dict:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        model = MultimodalLM.from_pretrained(cfg.init_from)
    else:
        model = MultimodalLM.build(apply_overrides(get_preset(cfg.model), cfg.model_overrides))
    scenes = load_scenes(cfg.scenes)
    n_hold = min(cfg.heldout, len(scenes) // 5)
    train, held = scenes[: len(scenes) - n_hold], scenes[len(scenes) - n_hold:]
    builder = MultimodalProcessor.for_model(model, max_length=cfg.pack_length, template=cfg.template)
    pad = model.tokenizer.pad_token_id
    pack = PackingCollator(max_length=cfg.pack_length, pad_token_id=pad)
    collate = PaddingCollator(pad_token_id=pad)
    llm = model.llm
    use_packed_attention(llm)  # packed rows: one attention call per sample (sdpa -> sdpa_packed)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in llm.parameters():
        p.requires_grad_(True)
    params = [p for p in llm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    os.makedirs(cfg.output_dir, exist_ok=True)
    metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    open(metrics_path, "w").close()

    def probe() -> Dict[str, float]:
        if not held:
            return {}
        return {"heldout_context_acc": first_answer_accuracy(llm, builder, collate, held, cfg.seed, True),
                "heldout_no_context_acc": first_answer_accuracy(llm, builder, collate, held, cfg.seed, False)}

    rng = random.Random(cfg.seed)
    t0 = time.time()
    tokens = 0
    losses: List[float] = []
    curve = []
    llm.train()
    bar = tqdm(total=cfg.steps, desc="text pretrain", disable=not progress)
    for step in range(cfg.steps):
        samples = [text_sample(builder, rng.choice(train), rng, cfg, step * cfg.batch_size + j)
                   for j in range(cfg.batch_size)]
        bt = pack(samples)  # (R, L) rows of packed conversations; position_ids restart per sample
        lr = _lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            out = llm(input_ids=bt["input_ids"], position_ids=bt["position_ids"], labels=bt["labels"],
                      use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        tokens += int(bt["input_ids"].numel())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        rec = {"stage": "text", "step": step + 1, "time": time.time(), "seconds": round(time.time() - t0, 2),
               "loss": losses[-1], "learning_rate": lr}
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            rec.update(probe())
            curve.append(rec)
            log.info("text pretrain step %d: %s", step + 1, rec)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
    bar.close()
    train_s = time.time() - t0
    final = probe()
    model.save_pretrained(cfg.output_dir)
    summary = {"stage": "text", "steps": cfg.steps, "seconds": round(time.time() - t0, 1),
               "train_seconds": round(train_s, 1), "tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
               "samples_per_s": round(cfg.steps * cfg.batch_size / max(train_s, 1e-9), 2),
               "first_loss": losses[0] if losses else None,
               "last_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None, **final}
    with open(os.path.join(cfg.output_dir, "text_pretrain.json"), "w") as f:
        json.dump({"config": asdict(cfg), "summary": summary, "probes": curve}, f, indent=2)
    log.info("text pretraining: %s", summary)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", required=True, help="scenes_train.jsonl of a Shapes world")
    p.add_argument("--out", required=True)
    p.add_argument("--init-from", help="a checkpoint to start from (default: a fresh --model preset)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(text_pretrain(TextPretrainConfig(
        scenes=a.scenes, output_dir=a.out, init_from=a.init_from, model=a.model, steps=a.steps,
        batch_size=a.batch_size, learning_rate=a.lr, seed=a.seed)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
