"""The gen stage's data: prompt/image pairs (``gen_train.json``) -> left-padded prompt ids + image tensors.

    records = read_gen_records("data/shapes/gen_train.json")          # bad records counted, not fatal
    ds = GenDataset(records, model.tokenizer, image_size=48)
    ds[0] -> {"input_ids": [bos, ...], "image": (3, 48, 48) float in [0, 1], "id": str, "skipped": [...]}
    batch = GenCollator(model.tokenizer.pad_token_id)([ds[0], ds[1]])
    batch -> {"input_ids": (B, L) left-padded, "attention_mask": (B, L), "gen_images": (B, 3, 48, 48)}
    loss = model(**batch)["loss"]                                     # MultimodalLM routes to gen_head.loss

A record is ``{"id", "image" (relative to the json's folder), "prompt", ...}`` (data_pipelines/shapes/gen.py
writes them; other keys such as "shapes" are ignored here). Prompts are tokenised exactly as
``MultimodalLM.gen_prompt_inputs`` does at sampling time (``mllm.model.gen_prompt_ids``). Images are loaded
lazily with ``data_pipelines.images.load_image``; one that is not square is centre-cropped and any other size
is resized (bicubic) to the head's ``image_size``. As in ``MultimodalDataset``, a bad record (malformed,
missing or unreadable image) never stops a run: it is counted once in the stats and the next good record is
used; ``strict=True`` raises instead, with a message that names the file, record and field.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from data_pipelines.dataset import SkippingDataset
from data_pipelines.images import ImageLoadError, load_image
from data_pipelines.records import Origin, RecordError, SkipStats
from mllm.model import gen_prompt_ids, pad_left


def read_gen_records(path: str, *, strict: bool = False, stats: Optional[SkipStats] = None,
                     max_samples: Optional[int] = None) -> List[Dict[str, Any]]:
    """The usable records of a gen JSON list, each with ``image`` resolved to an absolute path and its
    ``origin``; malformed ones are counted in ``stats`` (or raised when ``strict``)."""
    stats = stats if stats is not None else SkipStats()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"gen data file {path!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); a gen data file is a JSON list of "
                         f"{{id, image, prompt}} records") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{id, image, prompt}} records, got {type(data).__name__}")
    root = os.path.dirname(os.path.abspath(path))
    out = []
    for i, rec in enumerate(data):
        origin = Origin(path, index=i)
        try:
            out.append(_check(rec, origin, root))
        except RecordError as err:
            stats.skip(err, strict=strict)
        if max_samples is not None and len(out) >= max_samples:
            break
    if not out:
        raise ValueError(f"{path}: no usable gen records ({stats.summary()})")
    return out


def _check(rec: Any, origin: Origin, root: str) -> Dict[str, Any]:
    if not isinstance(rec, dict):
        raise RecordError("malformed_record", f"expected an object, got {type(rec).__name__}", origin)
    rid = str(rec.get("id", origin.index))
    for key in ("image", "prompt"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise RecordError("malformed_record", "missing or empty (a non-empty string is required)", origin,
                              rid, key)
    return {"id": rid, "prompt": rec["prompt"], "image": os.path.join(root, rec["image"]), "origin": origin}


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> (3, size, size) float32 in [0, 1] (centre-cropped to a square, resized if needed)."""
    w, h = image.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    arr = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


class GenDataset(SkippingDataset):
    def __init__(self, records: Sequence[Dict[str, Any]], tokenizer, image_size: int, *, strict: bool = False,
                 stats: Optional[SkipStats] = None):
        if not records:
            raise ValueError("GenDataset: no records")
        self.records, self.tokenizer, self.image_size, self.strict = records, tokenizer, int(image_size), strict
        self.stats = stats if stats is not None else SkipStats()
        self._bad: set = set()

    def __len__(self) -> int:
        return len(self.records)

    def build(self, i: int) -> Dict[str, Any]:
        """Record ``i`` as a sample, or ``RecordError`` (no skipping)."""
        rec = self.records[i]
        if not os.path.exists(rec["image"]):
            raise RecordError("missing_image", f"{rec['image']} does not exist", rec["origin"], rec["id"], "image")
        try:
            image = load_image(rec["image"])
        except ImageLoadError as e:
            raise RecordError("unreadable_image", str(e), rec["origin"], rec["id"], "image") from None
        ids = gen_prompt_ids(self.tokenizer, rec["prompt"])
        return {"input_ids": ids, "image": image_tensor(image, self.image_size), "id": rec["id"], "skipped": []}



class GenCollator:
    """Samples -> {"input_ids", "attention_mask"} (left-padded, BOS first) + "gen_images" (B, 3, H, W)."""

    def __init__(self, pad_token_id: int, report_skips: bool = False):
        self.pad_token_id, self.report_skips = pad_token_id, report_skips

    def __call__(self, samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        ids, mask = pad_left([s["input_ids"] for s in samples], self.pad_token_id)  # (B, L)
        batch: Dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                 "gen_images": torch.stack([s["image"] for s in samples])}  # (B, 3, H, W)
        if self.report_skips:
            batch["data_skips"] = [e for s in samples for e in s.get("skipped", ())]
        return batch


def gen_preflight(dataset: GenDataset, num_samples: int = 64) -> Dict[str, Any]:
    """Build the first samples strictly enough to catch a systematic problem before step 1: an image size or
    channel count the head cannot take, or prompts that tokenise to nothing but BOS."""
    checked, bad = 0, 0
    for i in range(min(num_samples, len(dataset))):
        try:
            s = dataset.build(i)
        except RecordError:
            bad += 1
            continue
        checked += 1
        if tuple(s["image"].shape) != (3, dataset.image_size, dataset.image_size):
            raise ValueError(f"{dataset.records[i]['origin']} record {s['id']!r}: image tensor "
                             f"{tuple(s['image'].shape)} is not (3, {dataset.image_size}, {dataset.image_size})")
        if len(s["input_ids"]) < 2:
            raise ValueError(f"{dataset.records[i]['origin']} record {s['id']!r} field 'prompt': tokenises to "
                             f"{len(s['input_ids'])} id(s); the head has nothing to read")
    if checked == 0:
        raise ValueError(f"gen data: none of the first {min(num_samples, len(dataset))} records could be built "
                         f"({dataset.stats.summary()})")
    return {"checked": checked, "bad": bad}
