"""Shared pieces of the serving tests: a tiny checkpoint and its export, images, data URLs, clients.

The model is tests/_tiny.py's config with its LLM weights drawn wider than the default init (std 0.3, as in
tests/test_chat.py), so greedy answers depend on the image and the text and rarely end early: "the server
says what `mllm chat` says" cannot pass by both saying nothing.
"""
from __future__ import annotations

import base64
import os
from typing import Dict

import torch
from PIL import Image

from mllm.model import MultimodalLM
from tests._tiny import tiny_config

MODEL_ID = "ckpt"
# non-square sizes, so AnyRes picks different grids (and token counts) for them
IMAGES = {"red": ((50, 40), (220, 20, 20)), "blue": ((30, 70), (20, 20, 220)), "green": ((64, 32), (20, 200, 20))}


def make_files(root) -> Dict[str, str]:
    """``{"root", "ckpt", "red", "blue", "green"}`` under ``root``: a checkpoint named ``ckpt`` and PNGs."""
    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_config(anyres=True)).eval()
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    paths = {"root": str(root), "ckpt": os.path.join(str(root), MODEL_ID)}
    model.save_pretrained(paths["ckpt"])
    for name, (size, colour) in IMAGES.items():
        paths[name] = os.path.join(str(root), f"{name}.png")
        Image.new("RGB", size, colour).save(paths[name])
    return paths


def data_url(path_or_bytes, mime: str = "image/png") -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def user(text: str, *images: str) -> Dict:
    """A user message LLaVA style: its images (paths, as data URLs) first, then the text."""
    parts = [{"type": "image_url", "image_url": {"url": data_url(p)}} for p in images]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def client(server, api_key: str = "unused", **kwargs):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=60, **kwargs)
