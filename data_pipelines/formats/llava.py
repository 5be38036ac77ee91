"""LLaVA JSON / JSONL: ``{"id", "image": str | [str], "conversations": [{"from", "value"}]}``.

    for rec in read_llava("llava_v1_5_mix665k.json", image_root="data/", stats=stats): ...
    for rec in read_llava("big.jsonl", image_placement="keep"): ...   # JSONL streams line by line

The LLaVA-Pretrain (558K) and LLaVA-Instruct (665K) layout. ``from`` is ``human`` | ``gpt`` | ``system``
(``user`` / ``assistant`` are accepted too); a record without ``image`` is text-only; ``image`` may be a
list (several images, one ``<image>`` marker each). By default every ``<image>`` is moved to the front
of the first user turn as ``"<image>\\n" + rest`` (LLaVA's ``preprocess_multimodal``);
``image_placement="keep"`` leaves markers where they are. Relative image paths resolve under
``image_root`` (default: the data file's folder).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional

from data_pipelines.formats.jsonio import read_json_records
from data_pipelines.records import Origin, Record, RecordError, SkipStats, check_record, resolve_image

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def record_id(obj: Dict[str, Any], origin: Origin) -> str:
    rid = obj.get("id")
    return str(rid) if rid is not None else str(origin)


def image_list(value: Any, origin: Origin, rid: str, field: str = "image") -> List[Any]:
    """``None`` -> [], one source -> [source], a list -> the list (each a path, bytes or image dict)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    for i, item in enumerate(items):
        if not isinstance(item, (str, bytes, dict)) and not hasattr(item, "convert"):  # PIL images too
            raise RecordError("malformed_record", f"expected an image path, got {type(item).__name__}",
                              origin, rid, f"{field}[{i}]" if isinstance(value, (list, tuple)) else field)
        if isinstance(item, str) and not item.strip():
            raise RecordError("malformed_record", "empty image path", origin, rid, field)
    return list(items)


def llava_record(obj: Any, origin: Origin, image_root: Optional[str] = None,
                 image_placement: str = "front") -> Record:
    if not isinstance(obj, dict):
        raise RecordError("malformed_record", f"expected a JSON object, got {type(obj).__name__}", origin)
    rid = record_id(obj, origin)
    convs = obj.get("conversations")
    if not isinstance(convs, list):
        raise RecordError("malformed_record", "missing or not a list", origin, rid, "conversations")
    messages = []
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise RecordError("malformed_record", 'each turn must be {"from": str, "value": str}',
                              origin, rid, f"conversations[{i}]")
        role = ROLE_MAP.get(turn["from"])
        if role is None:
            raise RecordError("unknown_role", f"unknown speaker {turn['from']!r} (expected one of "
                              f"{', '.join(sorted(ROLE_MAP))})", origin, rid, f"conversations[{i}].from")
        messages.append({"role": role, "content": turn["value"]})
    images = image_list(obj.get("image", obj.get("images")), origin, rid)
    images = [resolve_image(src, image_root) for src in images]
    return check_record(Record(rid, messages, images, origin), image_placement)


def read_llava(path: str, *, image_root: Optional[str] = None, image_placement: str = "front",
               stats: Optional[SkipStats] = None, strict: bool = False,
               max_samples: Optional[int] = None) -> Iterator[Record]:
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    return read_json_records(path, lambda obj, origin: llava_record(obj, origin, root, image_placement),
                             stats, strict, max_samples)
