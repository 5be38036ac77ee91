"""JSON and JSONL reading shared by the LLaVA and ShareGPT readers: one (origin, object-or-error) per record.

    for origin, obj in iter_json_objects("train.jsonl"):   # streams: one line in memory at a time
        if isinstance(obj, RecordError): ...                # a line that does not parse, already located

A ``.jsonl`` file is read line by line in binary and decoded per line, so a bad line (broken JSON, invalid
UTF-8) is one ``malformed_json`` error and the next line is read normally. A ``.json`` file must hold one
array of records; it is parsed whole (as LLaVA does), and a file that does not parse is an error for the
whole file, since no record in it can be trusted.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Tuple, Union

from data_pipelines.records import Origin, RecordError, SkipStats


def is_jsonl(path: str) -> bool:
    return path.endswith((".jsonl", ".ndjson"))


def iter_json_objects(path: str) -> Iterator[Tuple[Origin, Union[Any, RecordError]]]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    if is_jsonl(path):
        yield from _iter_jsonl(path)
    else:
        yield from _iter_json_array(path)


def _iter_jsonl(path: str) -> Iterator[Tuple[Origin, Union[Any, RecordError]]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines are not records
            origin = Origin(path, line=lineno)
            try:
                yield origin, json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                yield origin, RecordError("malformed_json", f"line does not parse as JSON ({e})", origin)


def _iter_json_array(path: str) -> Iterator[Tuple[Origin, Union[Any, RecordError]]]:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); a .json data file must hold one array of records "
                         f"(use .jsonl for one record per line)") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: a .json data file must hold an array of records, got {type(data).__name__}")
    for i, obj in enumerate(data):
        yield Origin(path, index=i), obj


def read_json_records(path: str, convert, stats=None, strict: bool = False,
                      max_samples: int | None = None) -> Iterator[Any]:
    """Yield ``convert(obj, origin)`` for each good record; count (or, strict, raise) each bad one.

    Stops after ``max_samples`` good records without reading further. Without a ``stats`` to count into,
    the skips of this file are counted locally and logged as one line when the file is exhausted.
    """
    if max_samples is not None and max_samples <= 0:
        return
    own = stats is None
    stats = SkipStats() if own else stats
    kept = 0
    for origin, obj in iter_json_objects(path):
        try:
            if isinstance(obj, RecordError):
                raise obj
            record = convert(obj, origin)
        except RecordError as err:
            stats.skip(err, strict=strict)
            continue
        yield record
        kept += 1
        if max_samples is not None and kept >= max_samples:
            break
    if own and stats.total:
        stats.log()
