"""Dataset format readers, chosen by exact name; every one yields normalised ``Record``s.

    from data_pipelines.formats import read_records, load_records
    for rec in read_records("chat.jsonl", format="sharegpt", stats=stats): ...   # streaming iterator
    records = load_records("llava_665k.json", format="auto", image_root="data")   # map-style sequence

Formats: ``llava`` (LLaVA JSON/JSONL), ``sharegpt`` (``messages`` JSON/JSONL), ``hf`` (HF datasets: a
``save_to_disk`` folder, parquet, json(l), imagefolder). ``auto`` picks ``hf`` for folders and parquet, and
for ``.json``/``.jsonl`` looks at the first record: ``conversations`` -> llava, ``messages`` -> sharegpt.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator, List, Optional, Union

from mllm.registry import Registry

from data_pipelines.formats.hf import HFRecords, read_hf
from data_pipelines.formats.jsonio import is_jsonl
from data_pipelines.formats.llava import read_llava
from data_pipelines.formats.sharegpt import read_sharegpt
from data_pipelines.records import Record, SkipStats

FORMATS: Registry[Callable[..., Iterator[Record]]] = Registry("data format")
FORMATS.add("llava", read_llava)
FORMATS.add("sharegpt", read_sharegpt)
FORMATS.add("hf", read_hf)


def detect_format(path: str) -> str:
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(".parquet"):
        return "hf"
    if not path.endswith((".json", ".jsonl", ".ndjson")):
        raise ValueError(f"{path}: cannot detect the data format from the name; pass format= one of "
                         f"{', '.join(FORMATS.keys())}")
    first = _first_object(path)
    if isinstance(first, dict) and "conversations" in first:
        return "llava"
    if isinstance(first, dict) and "messages" in first:
        return "sharegpt"
    raise ValueError(f"{path}: the first record has neither 'conversations' (llava) nor 'messages' "
                     f"(sharegpt); pass format= explicitly")


def _first_object(path: str) -> Any:
    if is_jsonl(path):
        with open(path, "rb") as f:
            for raw in f:
                try:
                    return json.loads(raw)
                except ValueError:
                    continue  # a broken first line must not decide the format
        return None
    with open(path, "rb") as f:
        data = json.loads(f.read())
    return data[0] if isinstance(data, list) and data else None


def read_records(path: str, format: str = "auto", *, stats: Optional[SkipStats] = None, strict: bool = False,
                 **kwargs) -> Iterator[Record]:
    """Stream the good records of one source (keyword arguments go to the format's reader)."""
    fmt = detect_format(path) if format == "auto" else format
    return FORMATS.get(fmt)(path, stats=stats, strict=strict, **kwargs)


def load_records(path: str, format: str = "auto", *, stats: Optional[SkipStats] = None, strict: bool = False,
                 **kwargs) -> Union[List[Record], HFRecords]:
    """A map-style sequence of records: JSON/JSONL are read (and validated) now; an HF source is wrapped
    lazily (rows convert on access, bad rows are skipped and counted by the dataset)."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "hf":
        kwargs.pop("streaming", None)
        return HFRecords.load(path, **kwargs)
    return list(FORMATS.get(fmt)(path, stats=stats, strict=strict, **kwargs))


__all__ = ["FORMATS", "HFRecords", "detect_format", "load_records", "read_records", "read_hf", "read_llava",
           "read_sharegpt"]
