"""What every benchmark writes into its output directory, and the text tables it prints.

    from eval.report import format_table, write_scores, write_run_info
    print(format_table(["Split", "Acc"], [["Overall", 0.5]]))
    write_scores("out", {"Overall": 0.5})                   # out/scores.json
    write_run_info("out", benchmark="mmbench", data_path="MMBench_DEV_EN.tsv",
                   prompt_version="vlmevalkit-mcq-v1", predictions_path="preds.tsv")   # out/run_info.json

``run_info.json`` records what is needed to reproduce a number: the data file (or directory) with its
sha256, the predictions file or model path, the prompt version and the versions of mllm, torch and
transformers (read from package metadata, so torch is not imported just to score a file).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
from importlib import metadata
from typing import Any, Dict, Mapping, Optional, Sequence

SCORES_FILE = "scores.json"
RUN_INFO_FILE = "run_info.json"


def sha256_of(path: str) -> str:
    """sha256 of a file; of a directory, over its files' relative paths and contents in sorted order."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                digest.update(os.path.relpath(full, path).replace(os.sep, "/").encode() + b"\0")
                _update_with_file(digest, full)
    else:
        _update_with_file(digest, path)
    return digest.hexdigest()


def _update_with_file(digest, path: str) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def package_versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {}
    for name in ("mllm", "torch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_json(path: str, obj: Any) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)  # a crash mid-write never leaves a half scores.json behind
    return path


def write_scores(out_dir: str, scores: Mapping[str, Any]) -> str:
    return write_json(os.path.join(out_dir, SCORES_FILE), scores)


def write_run_info(out_dir: str, *, benchmark: str, data_path: str, prompt_version: str,
                   predictions_path: Optional[str] = None, model_path: Optional[str] = None,
                   extra: Optional[Mapping[str, Any]] = None) -> str:
    info: Dict[str, Any] = {
        "benchmark": benchmark,
        "data": {"path": os.path.abspath(data_path), "sha256": sha256_of(data_path)},
        "predictions": None,
        "model": os.path.abspath(model_path) if model_path else None,
        "prompt_version": prompt_version,
        "versions": package_versions(),
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if predictions_path:
        info["predictions"] = {"path": os.path.abspath(predictions_path), "sha256": sha256_of(predictions_path)}
    if extra:
        info.update(extra)
    return write_json(os.path.join(out_dir, RUN_INFO_FILE), info)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{100 * value:.2f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; floats are fractions and print as percentages with two decimals."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        first, rest = values[0], values[1:]
        return "  ".join([first.ljust(widths[0])] + [v.rjust(w) for v, w in zip(rest, widths[1:])])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule] + [line(r) for r in cells])
