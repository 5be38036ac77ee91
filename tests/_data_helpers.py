"""Helpers for the data pipeline tests: tiny images on disk, JSON writers, one shared tiny model."""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterable, Sequence, Tuple

from PIL import Image


def png(path: str, hw: Tuple[int, int], colour: Tuple[int, int, int] = (200, 30, 30)) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    h, w = hw
    Image.new("RGB", (w, h), colour).save(path)
    return path


def write_json(path: str, data: Any) -> str:
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def write_lines(path: str, lines: Iterable[Any]) -> str:
    """Objects are dumped as JSON; strings are written as they are (for broken lines)."""
    with open(path, "w") as f:
        for item in lines:
            f.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


def llava(rid: str, image: Any, turns: Sequence[Tuple[str, str]]) -> dict:
    rec = {"id": rid, "conversations": [{"from": frm, "value": val} for frm, val in turns]}
    if image is not None:
        rec["image"] = image
    return rec


@functools.lru_cache(maxsize=None)
def tiny_model(anyres: bool = True):
    from mllm.model import MultimodalLM
    from tests._tiny import tiny_config

    return MultimodalLM.build(tiny_config(anyres=anyres)).eval()
