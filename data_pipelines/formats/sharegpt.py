"""ShareGPT / OpenAI-style ``messages`` records (JSON array or JSONL).

    {"id": "7", "images": ["a.png", "b.png"],
     "messages": [{"role": "user", "content": "Compare <image> and <image>."},
                  {"role": "assistant", "content": "The first is red."}]}
    {"id": "8", "messages": [{"role": "user", "content": [{"type": "image", "image": "c.png"},
                                                         {"type": "text", "text": "What is it?"}]},
                             {"role": "assistant", "content": [{"type": "text", "text": "A star."}]}]}

    for rec in read_sharegpt("chat.jsonl", image_root="imgs/", stats=stats): ...

Content is a string with ``<image>`` markers, or a list of parts: ``{"type": "text", "text"}`` and
``{"type": "image"}`` (or ``"image_url"``). An image part names its own local file (``image`` / ``path`` /
``image_url.url`` as a path, ``file://`` URL or ``data:`` base64 URL) or, without one, takes the next entry
of the top-level ``images`` list, as each string marker does. A list becomes a string by one rule, the
same in every template's Jinja export: an image part is ``"<image>\\n"``, a text part its text.
Markers stay where they are by default (``image_placement="keep"``). Relative paths resolve under
``image_root`` (default: the data file's folder).
"""
from __future__ import annotations

import base64
import os
from typing import Any, Dict, Iterator, List, Optional

from data_pipelines.formats.jsonio import read_json_records
from data_pipelines.formats.llava import image_list, record_id
from data_pipelines.records import (IMAGE_MARKER, Origin, Record, RecordError, SkipStats, check_record,
                                    resolve_image)

IMAGE_PART_TEXT = IMAGE_MARKER + "\n"
ROLE_MAP = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}


def _part_source(part: Dict[str, Any]) -> Any:
    """The image a part names itself, or None when it takes the next top-level image."""
    if part.get("type") == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url:
            return None
        if url.startswith("data:"):
            return base64.b64decode(url.split(",", 1)[1])
        if url.startswith("file://"):
            return url[len("file://"):]
        if "://" in url:
            raise ValueError(f"remote image URL {url[:60]!r} (only local paths, file:// and data: URLs)")
        return url
    for key in ("image", "path"):
        if part.get(key) is not None:
            return part[key]
    return None


def sharegpt_record(obj: Any, origin: Origin, image_root: Optional[str] = None,
                    image_placement: str = "keep") -> Record:
    if not isinstance(obj, dict):
        raise RecordError("malformed_record", f"expected a JSON object, got {type(obj).__name__}", origin)
    rid = record_id(obj, origin)
    raw = obj.get("messages")
    if not isinstance(raw, list):
        raise RecordError("malformed_record", "missing or not a list", origin, rid, "messages")
    queue = image_list(obj.get("images", obj.get("image")), origin, rid, "images")
    images: List[Any] = []
    messages = []
    for i, msg in enumerate(raw):
        field = f"messages[{i}]"
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise RecordError("malformed_record", 'each message must be {"role", "content"}', origin, rid, field)
        role = ROLE_MAP.get(msg["role"])
        if role is None:
            raise RecordError("unknown_role", f"unknown role {msg['role']!r} (expected system, user or "
                              f"assistant)", origin, rid, f"{field}.role")
        content = msg["content"]
        if isinstance(content, str):
            for _ in range(content.count(IMAGE_MARKER)):
                images.append(queue.pop(0) if queue else None)
        elif isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                pfield = f"{field}.content[{j}]"
                if not isinstance(part, dict) or part.get("type") not in ("text", "image", "image_url"):
                    raise RecordError("malformed_record", "a content part must be {'type': 'text' | 'image' | "
                                      "'image_url', ...}", origin, rid, pfield)
                if part["type"] == "text":
                    if not isinstance(part.get("text"), str):
                        raise RecordError("malformed_record", "text part without a string 'text'", origin, rid,
                                          pfield)
                    texts.append(part["text"])
                    continue
                try:
                    source = _part_source(part)
                except ValueError as e:
                    raise RecordError("malformed_record", str(e), origin, rid, pfield) from None
                images.append(source if source is not None else (queue.pop(0) if queue else None))
                texts.append(IMAGE_PART_TEXT)
            content = "".join(texts)
        else:
            raise RecordError("malformed_record", f"content must be a string or a list of parts, got "
                              f"{type(content).__name__}", origin, rid, f"{field}.content")
        messages.append({"role": role, "content": content})
    if queue or any(src is None for src in images):
        n_markers = len(images)
        n_given = sum(src is not None for src in images) + len(queue)
        raise RecordError("image_count_mismatch", f"{n_markers} image marker(s)/part(s) but {n_given} image(s) "
                          f"given", origin, rid, "images")
    images = [resolve_image(src, image_root) for src in images]
    return check_record(Record(rid, messages, images, origin), image_placement)


def read_sharegpt(path: str, *, image_root: Optional[str] = None, image_placement: str = "keep",
                  stats: Optional[SkipStats] = None, strict: bool = False,
                  max_samples: Optional[int] = None) -> Iterator[Record]:
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    return read_json_records(path, lambda obj, origin: sharegpt_record(obj, origin, root, image_placement),
                             stats, strict, max_samples)
