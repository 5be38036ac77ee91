"""The tiny model learns to see: a fresh model, trained by the real stage runner on a small grounded task,
answers held-out images far better than the same model shown blank images.

Task: one filled shape (square or disc, random size and place) on a light 48 px image; "What colour is
the shape?" -> one of six colour words. The prompt is the same for every image, so the answer can only
come from the pixels: with blank images the model can do no better than guessing a colour (~1/6). Held-out
accuracy is exact match of the answer under teacher forcing (what greedy decoding says).

This fails when image features stop reaching the LLM (a broken scatter into the embeddings, a connector
whose output is lost, a tower that gets no gradient and stays random), which is the point of it.
About a minute on one thread.
"""
from __future__ import annotations

import json
import os
import random

import pytest
import torch
from PIL import Image, ImageDraw

from data_pipelines.collate import PaddingCollator
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.records import Record
from mllm.config import apply_overrides
from mllm.model import MultimodalLM
from mllm.presets import get_preset


COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 30),
           "purple": (140, 50, 170), "orange": (245, 140, 20)}
QUESTION = "What colour is the shape?"
SIZE = 48


def draw(rng: random.Random) -> tuple:
    colour = rng.choice(sorted(COLOURS))
    img = Image.new("RGB", (SIZE, SIZE), (235, 235, 230))
    side = rng.randint(16, 32)
    x, y = rng.randint(0, SIZE - side), rng.randint(0, SIZE - side)
    d = ImageDraw.Draw(img)
    (d.rectangle if rng.random() < 0.5 else d.ellipse)([x, y, x + side - 1, y + side - 1], fill=COLOURS[colour])
    return img, colour


def write_task(root: str, n: int, seed: int) -> str:
    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    records = []
    for i in range(n):
        img, colour = draw(rng)
        name = f"images/{seed}_{i}.png"
        img.save(os.path.join(root, name))
        records.append({"id": f"{seed}_{i}", "image": name, "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": colour}]})
    path = os.path.join(root, f"task_{seed}.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path


@torch.no_grad()
def accuracy(model, path: str, blank: bool = False) -> float:
    with open(path) as f:
        records = json.load(f)
    root = os.path.dirname(path)
    builder = MultimodalProcessor.for_model(model, max_length=256)
    collate = PaddingCollator(pad_token_id=model.tokenizer.pad_token_id)
    samples = []
    for r in records:
        msgs = [{"role": "user", "content": r["conversations"][0]["value"]},
                {"role": "assistant", "content": r["conversations"][1]["value"]}]
        img = Image.open(os.path.join(root, r["image"])).convert("RGB")
        if blank:
            img = Image.new("RGB", img.size, (235, 235, 230))
        samples.append(builder.encode_sample(Record(id=r["id"], messages=msgs, images=[img])))
    model.eval()
    batch = collate(samples)
    batch.pop("data_skips", None)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ok = ((logits.argmax(-1) == labels) | (labels == -100)).all(dim=1)
    return float(ok.float().mean())


@pytest.mark.slow
def test_fresh_tiny_model_learns_to_read_colour_from_pixels(tmp_path):
    from train_stages.runner import run_stage
    from train_stages.specs import TrainConfig

    torch.set_num_threads(1)
    train = write_task(str(tmp_path), 1200, seed=1)
    held_out = write_task(str(tmp_path), 120, seed=2)
    torch.manual_seed(0)
    start = os.path.join(tmp_path, "start")
    # the tiny default with one 48 px tile per image (36 image tokens)
    cfg = apply_overrides(get_preset("tiny"), ["anyres.enabled=false", "chat_template=vicuna_v1_short",
                                               "connector.output_std=0.02"])
    MultimodalLM.build(cfg).save_pretrained(start)
    out = os.path.join(tmp_path, "run")
    run_stage(TrainConfig.from_dict(dict(
        stage="multitask", output_dir=out, init_from=start, data=[{"path": train}], deepspeed="none",
        modules={"vision": {"mode": "full"}}, per_device_train_batch_size=16, num_train_epochs=3,
        learning_rate=2e-3, warmup_ratio=0.05, max_grad_norm=1.0, bf16=True, save_steps=0, logging_steps=50,
        seed=0, max_length=256)))
    model = MultimodalLM.from_pretrained(out)
    seen, blank = accuracy(model, held_out), accuracy(model, held_out, blank=True)
    print(f"held-out colour accuracy {seen:.3f}, same model on blank images {blank:.3f}")
    assert blank <= 0.35, f"blank images should leave only a guess, got {blank:.2f}"
    assert seen >= 0.8 and seen - blank >= 0.5, f"held-out {seen:.2f} vs blank images {blank:.2f}"
