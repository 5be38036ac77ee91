"""Readers for MMBench: the official TSV and a model's predictions (TSV, XLSX or JSONL).

    from eval.mmbench.data import load_mmbench_tsv, load_predictions
    data = load_mmbench_tsv("MMBench_DEV_EN.tsv")
    row = data[0]                       # dict: index (int), question, hint, A, B, ..., answer, category, ...
    images = data.images(row)           # decoded PIL images of that row, only when asked for
    preds = load_predictions("preds.jsonl")   # {index: prediction text}

The TSV follows VLMEvalKit's ``ImageBaseDataset.__init__`` (``vlmeval/dataset/image_base.py``) and
``toliststr`` (``vlmeval/smp/misc.py``): the ``image`` cell is base64, or (1 to 64 characters) the
``index`` of another row whose image it reuses, or a list of base64 strings for a multi-image row. A
reference must point at a row that holds image data itself, as VLMEvalKit asserts.

Where we differ: cells are read as text with ``keep_default_na=False``, so an option whose text is
literally ``None``, ``NA`` or ``nan`` stays an option (VLMEvalKit's ``pd.read_csv`` turns those into NaN
and drops them); only an empty cell means "no option". Rows without an image are kept as text-only rows
(VLMEvalKit drops them); the official MMBench files have an image on every row. Images are decoded lazily,
and broken references are errors at load time, naming the file and row. Prediction files are read as
text too: an empty prediction cell is an empty (unreadable) prediction, where VLMEvalKit reads NaN and
matches the string "nan" (which differs only when an option's text contains "nan").
"""
from __future__ import annotations

import ast
import base64
import binascii
import io
import json
import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

_MAX_REFERENCE_LEN = 64  # VLMEvalKit: an image cell this short is another row's index, not image data


def parse_index(value: object, where: str) -> int:
    """An ``index`` cell as int ("12", "12.0" and 12 are all 12); anything else is a ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: index {value!r} is not an integer")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{where}: index {value!r} is not an integer") from None
    if not number.is_integer():
        raise ValueError(f"{where}: index {value!r} is not an integer")
    return int(number)


def _split_image_cell(cell: str, where: str) -> List[str]:
    # A list cell holds several base64 strings; VLMEvalKit evaluates it as a Python literal.
    if len(cell) > 1 and cell[0] == "[" and cell[-1] == "]":
        try:
            items = json.loads(cell)
        except ValueError:
            try:
                items = ast.literal_eval(cell)
            except (ValueError, SyntaxError):
                raise ValueError(f"{where}: image cell looks like a list but cannot be parsed") from None
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError(f"{where}: image list must hold base64 strings")
        return items
    return [cell]


def decode_base64_image(data: str, where: str = "image"):
    """One base64 string -> an RGB PIL image."""
    from PIL import Image

    try:
        raw = base64.b64decode(data, validate=False)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, OSError) as e:
        raise ValueError(f"{where}: image is not a decodable base64 image ({e})") from None
    return image.convert("RGB") if image.mode != "RGB" else image


class MMBenchData(Sequence[Dict[str, object]]):
    """The rows of one MMBench TSV, in file order; a sequence of dicts without the ``image`` column."""

    def __init__(self, path: str, rows: List[Dict[str, object]], columns: List[str],
                 image_cells: Dict[int, str]):
        self.path = path
        self.rows = rows
        self.columns = columns  # the file's columns in order, ``image`` left out
        self._image_cells = image_cells
        self._by_index = {row["index"]: row for row in rows}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        return self.rows[i]

    def __iter__(self) -> Iterator[Dict[str, object]]:
        return iter(self.rows)

    @property
    def has_answers(self) -> bool:
        """DEV files carry an ``answer`` per row; TEST files have none."""
        return any(str(row.get("answer", "")).strip() for row in self.rows)

    def row(self, index: int) -> Dict[str, object]:
        try:
            return self._by_index[index]
        except KeyError:
            raise KeyError(f"{self.path}: no row with index {index}") from None

    def image_strings(self, row_or_index: Union[Mapping[str, object], int]) -> List[str]:
        """The base64 strings of a row's images, references resolved (no decoding)."""
        index = row_or_index if isinstance(row_or_index, int) else int(row_or_index["index"])
        cell = self._image_cells.get(index, "")
        if not cell:
            return []
        if len(cell) <= _MAX_REFERENCE_LEN:
            cell = self._image_cells[parse_index(cell, f"{self.path}, row index {index}")]
        return _split_image_cell(cell, f"{self.path}, row index {index}")

    def images(self, row_or_index: Union[Mapping[str, object], int]):
        """A row's images as RGB PIL images, decoded now."""
        index = row_or_index if isinstance(row_or_index, int) else int(row_or_index["index"])
        where = f"{self.path}, row index {index}"
        return [decode_base64_image(s, where) for s in self.image_strings(index)]


def load_mmbench_tsv(path: Union[str, os.PathLike]) -> MMBenchData:
    """Read an MMBench TSV as published (DEV with ``answer``, TEST without)."""
    import pandas as pd

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MMBench data file not found: {path}")
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in ("index", "question") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}")
    columns = [c for c in frame.columns if c != "image"]
    rows: List[Dict[str, object]] = []
    image_cells: Dict[int, str] = {}
    for line, record in enumerate(frame.to_dict("records"), start=2):  # line 1 is the header
        where = f"{path}, line {line}"
        row: Dict[str, object] = {c: record[c] for c in columns}
        row["index"] = parse_index(record["index"], where)
        if "g_index" in row and str(row["g_index"]).strip():
            row["g_index"] = parse_index(row["g_index"], f"{where}, column g_index")
        if row["index"] in image_cells:
            raise ValueError(f"{where}: index {row['index']} appears twice")
        image_cells[row["index"]] = str(record.get("image", "")).strip()
        rows.append(row)
    _check_image_references(path, image_cells)
    return MMBenchData(path, rows, columns, image_cells)


def _check_image_references(path: str, image_cells: Mapping[int, str]) -> None:
    by_text = {str(i): i for i in image_cells}
    for index, cell in image_cells.items():
        if not cell or len(cell) > _MAX_REFERENCE_LEN:
            continue
        where = f"{path}, row index {index}"
        target = by_text.get(cell)
        if target is None:
            try:
                target = parse_index(cell, where)
            except ValueError:
                raise ValueError(f"{where}: image cell {cell!r} is neither image data nor a row index") from None
        if target not in image_cells:
            raise ValueError(f"{where}: image refers to index {cell}, which is not in the file")
        if len(image_cells[target]) <= _MAX_REFERENCE_LEN:
            raise ValueError(f"{where}: image refers to index {cell}, which holds no image data itself")


def load_predictions(path: Union[str, os.PathLike]) -> Dict[int, str]:
    """A model's MMBench predictions as ``{index: prediction}``.

    TSV and XLSX need columns ``index`` and ``prediction`` (any letter case, as VLMEvalKit lower-cases
    them); JSONL needs those keys on every line. Cells are read as text, never as NaN.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"predictions file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        records = _read_jsonl(path)
    elif ext in (".tsv", ".xlsx", ".csv"):
        records = _read_table(path, ext)
    else:
        raise ValueError(f"{path}: unsupported predictions format {ext or '(none)'}; use .tsv, .xlsx or .jsonl")
    predictions: Dict[int, str] = {}
    for where, record in records:
        index = parse_index(record["index"], where)
        if index in predictions:
            raise ValueError(f"{where}: index {index} appears twice")
        value = record["prediction"]
        predictions[index] = "" if value is None else str(value)
    return predictions


def _read_jsonl(path: str):
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object with index and prediction")
            for key in ("index", "prediction"):
                if key not in record:
                    raise ValueError(f"{where}: missing field {key!r}")
            out.append((where, record))
    return out


def _read_table(path: str, ext: str):
    import pandas as pd

    if ext == ".xlsx":
        try:
            import openpyxl  # noqa: F401
        except ImportError:
            raise ValueError(f"{path}: reading .xlsx needs the openpyxl package (pip install openpyxl), "
                             "or save the predictions as .tsv or .jsonl") from None
        frame = pd.read_excel(path, dtype=str, keep_default_na=False)
    else:
        frame = pd.read_csv(path, sep="\t" if ext == ".tsv" else ",", dtype=str, keep_default_na=False)
    lower = {str(c).lower(): c for c in frame.columns}
    missing = [k for k in ("index", "prediction") if k not in lower]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}")
    return [
        (f"{path}, row {n}", {"index": idx, "prediction": pred})
        for n, (idx, pred) in enumerate(zip(frame[lower["index"]], frame[lower["prediction"]]), start=2)
    ]


def answer_of(row: Mapping[str, object]) -> Optional[str]:
    """The gold letter of a row, or None on TEST rows."""
    value = str(row.get("answer", "") or "").strip()
    return value or None
