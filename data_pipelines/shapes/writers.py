"""The file formats the Shapes world is written in, byte-for-byte reproducible.

    write_llava_json(path, records)              # LLaVA JSON: a list of {"id", "image"?, "conversations"}
    write_jsonl(path, rows)                      # one JSON object per line (scene metadata)
    write_mmbench_tsv(path, base_rows, with_answer=True)   # VLMEvalKit TSV, circular variants added
    write_mmmu_parquet(path, rows)               # the HF MMMU/MMMU column schema
    png_base64(path), image_struct(path)         # how an image is embedded in each

MMBench (VLMEvalKit layout). Columns are exactly ``MMBENCH_COLUMNS``; unused option letters are empty
cells. For a base row with n options, rows ``index + k * 1_000_000`` (k = 1..n-1) repeat it with the
options rotated by k (letter i shows original option (i + k) mod n: ABCD -> BCDA -> CDAB -> DABC) and the
answer letter moved with its option; their ``image`` cell holds the base row's index as a string instead
of the base64 again, which VLMEvalKit resolves by looking the index up. A test TSV has no answer column.

MMMU (HF ``MMMU/MMMU``). Columns are exactly ``MMMU_COLUMNS``; ``options`` and ``img_type`` are strings
holding Python lists; ``image_1``..``image_7`` are HF Image structs ``{"bytes", "path"}`` or null. The
file carries the ``huggingface`` schema metadata, so ``datasets`` decodes the image columns as images.
"""
from __future__ import annotations

import base64
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MMBENCH_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category",
                   "split", "image"]
OPTION_LETTERS = "ABCD"
CIRCULAR_STRIDE = 1_000_000
MMMU_MAX_IMAGES = 7
MMMU_COLUMNS = (["id", "question", "options", "explanation"]
                + [f"image_{i}" for i in range(1, MMMU_MAX_IMAGES + 1)]
                + ["img_type", "answer", "topic_difficulty", "question_type", "subfield"])
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_llava_json(path: str, records: Sequence[Mapping[str, Any]]) -> None:
    # One record per line inside the list: valid JSON that still diffs and greps line by line.
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"[\n{body}\n]\n" if records else "[]\n")


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def png_base64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def image_struct(path: str) -> Dict[str, Any]:
    with open(path, "rb") as f:
        return {"bytes": f.read(), "path": os.path.basename(path)}


# ---- MMBench ---------------------------------------------------------------------------------------
def circular_variants(row: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The n-1 rotated copies of a base row with n options (see the module docstring)."""
    letters = [c for c in OPTION_LETTERS if row.get(c, "") != ""]
    if letters != list(OPTION_LETTERS[: len(letters)]):
        raise ValueError(f"MMBench row {row.get('index')}: options must fill A, B, ... without gaps, "
                         f"got letters {letters}")
    n, options = len(letters), [row[c] for c in letters]
    out = []
    for k in range(1, n):
        variant = dict(row)
        variant["index"] = int(row["index"]) + k * CIRCULAR_STRIDE
        for i, letter in enumerate(letters):
            variant[letter] = options[(i + k) % n]
        if "answer" in row:
            variant["answer"] = letters[(letters.index(row["answer"]) - k) % n]
        variant["image"] = str(row["index"])
        out.append(variant)
    return out


def mmbench_frame(base_rows: Sequence[Mapping[str, Any]], with_answer: bool = True) -> pd.DataFrame:
    rows: List[Dict[str, Any]] = []
    for row in base_rows:
        missing = [c for c in MMBENCH_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"MMBench row {row.get('index')}: missing columns {missing}")
        if int(row["index"]) >= CIRCULAR_STRIDE:
            raise ValueError(f"MMBench row {row['index']}: base indices must be below {CIRCULAR_STRIDE}")
        rows.append({c: row[c] for c in MMBENCH_COLUMNS})
        rows.extend(circular_variants(rows[-1]))
    rows.sort(key=lambda r: r["index"])  # base rows first, then every k=1 variant, k=2, ...
    columns = [c for c in MMBENCH_COLUMNS if with_answer or c != "answer"]
    return pd.DataFrame(rows, columns=MMBENCH_COLUMNS)[columns]


def write_mmbench_tsv(path: str, base_rows: Sequence[Mapping[str, Any]], with_answer: bool = True) -> int:
    """Write base rows plus their circular variants; returns the number of rows written."""
    frame = mmbench_frame(base_rows, with_answer)
    frame.to_csv(path, sep="\t", index=False, lineterminator="\n")
    return len(frame)


# ---- MMMU ------------------------------------------------------------------------------------------
def mmmu_schema() -> pa.Schema:
    fields = []
    features: Dict[str, Any] = {}
    for name in MMMU_COLUMNS:
        if name.startswith("image_"):
            fields.append(pa.field(name, IMAGE_TYPE))
            features[name] = {"_type": "Image"}
        else:
            fields.append(pa.field(name, pa.string()))
            features[name] = {"dtype": "string", "_type": "Value"}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode("utf-8")}
    return pa.schema(fields, metadata=meta)


def write_mmmu_parquet(path: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Rows hold every MMMU column; image columns may be absent (null). Returns the row count."""
    columns: Dict[str, List[Optional[Any]]] = {name: [] for name in MMMU_COLUMNS}
    for row in rows:
        for name in MMMU_COLUMNS:
            if name not in row and not name.startswith("image_"):
                raise ValueError(f"MMMU row {row.get('id')}: missing column {name!r}")
            columns[name].append(row.get(name))
    schema = mmmu_schema()
    table = pa.table({name: pa.array(values, type=schema.field(name).type) for name, values in columns.items()},
                     schema=schema)
    pq.write_table(table, path)
    return table.num_rows
