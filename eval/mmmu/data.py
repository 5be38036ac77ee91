"""Reader for MMMU in its official Hugging Face layout, and the subject -> discipline table.

    from eval.mmmu.data import load_mmmu, gold_answer
    rows = load_mmmu("MMMU/", split="validation")   # a parquet file, a folder of them, or a datasets folder
    rows[0]["options"]      # ['0.5', '1.0', ...]: parsed from the string the dataset stores
    rows[0]["subject"]      # 'Accounting', from the id "validation_Accounting_1"
    gold_answer(rows[0])    # 'B', ['24/7', '3.429'] for multi-answer questions, None on the test split

Rows carry the official columns (``id, question, options, explanation, image_1..image_7, img_type,
answer, topic_difficulty, question_type, subfield``); only ``id, question, options, answer,
question_type`` are required. Image cells stay as stored (``{"bytes", "path"}`` structs) until
:func:`decode_image` is called on them, so loading does not decode hundreds of images.

Follows MMMU (``mmmu/utils/data_utils.py``): ``options`` is a string holding a Python list
(``construct_prompt`` evaluates it; we use ``ast.literal_eval``), the discipline table is
``DOMAIN_CAT2SUB_CAT``, and the subject of a row is its id without the split prefix and the number, as
``main_eval_only.py`` groups answers. Gold answers stored as a string holding a list (multi-answer open
questions) are read as that list, as the official ``answer_dict_val.json`` holds them. A ``subject``
column, when a file has one, overrides the id.
"""
from __future__ import annotations

import ast
import glob
import io
import os
import re
from typing import Any, Dict, List, Optional, Union

# MMMU's DOMAIN_CAT2SUB_CAT: the six disciplines and their 30 subjects, in the order the paper reports.
DISCIPLINES: Dict[str, List[str]] = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": ["Basic_Medical_Science", "Clinical_Medicine",
                            "Diagnostics_and_Laboratory_Medicine", "Pharmacy", "Public_Health"],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": ["Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"],
}
SUBJECT_TO_DISCIPLINE: Dict[str, str] = {s: d for d, subjects in DISCIPLINES.items() for s in subjects}

REQUIRED_COLUMNS = ("id", "question", "options", "answer", "question_type")
IMAGE_COLUMNS = tuple(f"image_{i}" for i in range(1, 8))
UNANSWERED = ("", "?")  # the test split stores "?" as its answer
_ID = re.compile(r"^[^_]+_(.+)_\d+$")  # "<split>_<Subject>_<number>"


def subject_of(sample_id: str) -> str:
    match = _ID.match(sample_id)
    if not match:
        raise ValueError(f"MMMU id {sample_id!r} is not '<split>_<Subject>_<number>' and the row has no subject")
    return match.group(1)


def parse_options(value: Any, where: str) -> List[str]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"{where}: options {value!r} is not a Python list literal") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: options must be a list, got {type(value).__name__}")
    return [str(o) for o in value]


def gold_answer(row: Dict[str, Any]) -> Optional[Union[str, List[str]]]:
    """The gold answer: a string, a list of accepted strings, or None when the split hides it."""
    value = row.get("answer")
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value)
    if text.strip() in UNANSWERED:
        return None
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            parsed = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            return text  # only looks like a list (e.g. "[H+]"): the text itself is the answer
        if isinstance(parsed, (list, tuple)):
            return [str(v) for v in parsed]
    return text


def decode_image(value: Any, where: str = "image", root: Optional[str] = None):
    """An image cell (PIL image, ``{"bytes", "path"}`` struct, raw bytes or a path) -> RGB PIL image."""
    from PIL import Image

    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        else:
            path = value.get("path") if isinstance(value, dict) else value
            if not isinstance(path, str) or not path:
                raise ValueError("no image data")
            if root and not os.path.isabs(path):
                path = os.path.join(root, path)
            image = Image.open(path)
        image.load()
    except (OSError, ValueError) as e:
        raise ValueError(f"{where}: cannot read image ({e})") from None
    return image if image.mode == "RGB" else image.convert("RGB")


def _parquet_files(path: str, split: Optional[str]) -> List[str]:
    files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    if split:
        # The hub layout is <Subject>/<split>-00000-of-00001.parquet; keep that split's files when named so.
        named = [f for f in files if os.path.basename(f).startswith((f"{split}-", f"{split}_", f"{split}."))
                 or os.path.basename(os.path.dirname(f)) == split]
        files = named or files
    return files


def _rows_from_parquet(files: List[str]) -> List[tuple]:
    import pyarrow.parquet as pq

    out = []
    for f in files:
        for n, row in enumerate(pq.read_table(f).to_pylist()):
            out.append((f"{f}, row {n}", row))
    return out


def _rows_from_datasets(path: str, split: Optional[str]) -> List[tuple]:
    import datasets

    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise ValueError(f"{path}: holds splits {', '.join(loaded)}; choose one with --split (split=)")
            split = next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"{path}: no split {split!r}; found {', '.join(loaded)}")
        loaded = loaded[split]
    # Keep images as {"bytes", "path"} so that nothing is decoded until a prompt needs it.
    for name, feature in loaded.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            loaded = loaded.cast_column(name, datasets.Image(decode=False))
    return [(f"{path}, row {n}", row) for n, row in enumerate(loaded)]


def load_mmmu(path: Union[str, os.PathLike], split: Optional[str] = None) -> List[Dict[str, Any]]:
    """Rows of an MMMU parquet file, folder of parquet files, or ``datasets.save_to_disk`` folder.

    ``split`` ("dev", "validation", "test") keeps that split's files and rows (ids start with the split).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"MMMU data not found: {path}")
    if os.path.isdir(path) and (os.path.exists(os.path.join(path, "dataset_info.json"))
                                or os.path.exists(os.path.join(path, "dataset_dict.json"))):
        records = _rows_from_datasets(path, split)
    else:
        files = [path] if os.path.isfile(path) else _parquet_files(path, split)
        if not files:
            raise FileNotFoundError(f"{path}: no .parquet files and no datasets folder")
        records = _rows_from_parquet(files)
    root = path if os.path.isdir(path) else os.path.dirname(path)

    rows: List[Dict[str, Any]] = []
    seen: Dict[str, str] = {}
    for where, record in records:
        missing = [c for c in REQUIRED_COLUMNS if c not in record]
        if missing:
            raise ValueError(f"{where}: missing column(s) {', '.join(missing)}")
        row = dict(record)
        row["id"] = str(row["id"])
        if split and not row["id"].startswith(f"{split}_"):
            continue
        where = f"{where} (id {row['id']})"
        if row["id"] in seen:
            raise ValueError(f"{where}: id also appears at {seen[row['id']]}")
        seen[row["id"]] = where
        row["options"] = parse_options(row["options"], where)
        try:
            row["subject"] = str(row.get("subject") or "") or subject_of(row["id"])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        row["_where"] = where
        row["_root"] = root
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows" + (f" for split {split!r}" if split else ""))
    return rows
