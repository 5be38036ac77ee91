"""The per-row prediction files of a run: one part file per rank, merged in data order by rank 0.

    store = PredictionStore("out/", key_field="index", rank=0)
    store.done()                  # {key: record} already in the merged file or any part file (resume)
    store.open(); store.append(results); store.close(); store.merge(keys)
    check_fingerprint("out/", fingerprint, overwrite=False, key_field="index")   # same run, or an error

Rank r appends each finished batch to ``raw_predictions.part-0000r.jsonl`` (flushed); rank 0 merges every
part into ``raw_predictions.jsonl`` in data order. A torn last line (killed mid-write) is dropped.
``raw_predictions.meta.json`` holds the run's fingerprint: resuming into a directory made by a different
run is an error unless ``overwrite=True``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Hashable, List, Mapping, Sequence

from eval.generate import Generated
from eval.report import write_json

MERGED_FILE = "raw_predictions.jsonl"
META_FILE = "raw_predictions.meta.json"
PART_PREFIX = "raw_predictions.part-"


class PredictionStore:
    """``raw_predictions.jsonl`` (merged) and ``raw_predictions.part-*.jsonl`` (one per rank) in ``out_dir``.

    A record is ``{key_field: key, "prediction": str, "prompt_tokens": int, "new_tokens": int}`` plus
    ``"error"`` when the row could not be run. For MMBench (``key_field="index"``) the merged file is also
    a valid ``--predictions`` file.
    """

    def __init__(self, out_dir: str, key_field: str, rank: int = 0):
        self.out_dir = out_dir
        self.key_field = key_field
        self.rank = rank
        self.part_path = os.path.join(out_dir, f"{PART_PREFIX}{rank:05d}.jsonl")
        self.merged_path = os.path.join(out_dir, MERGED_FILE)
        self._file = None

    def files(self) -> List[str]:
        if not os.path.isdir(self.out_dir):
            return []
        parts = sorted(n for n in os.listdir(self.out_dir) if n.startswith(PART_PREFIX) and n.endswith(".jsonl"))
        merged = [MERGED_FILE] if os.path.exists(self.merged_path) else []
        return [os.path.join(self.out_dir, n) for n in merged + parts]

    def read(self, path: str) -> List[Dict[str, Any]]:
        """Complete records of one file; a torn last line (a run killed mid-write) is ignored."""
        records = []
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        # every complete record ends with "\n", so the last element is "" unless the write was torn
        for number, line in enumerate(lines[:-1], start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}, line {number}: not valid JSON ({e}); delete the file or pass "
                                 "--overwrite to start over") from None
            if not isinstance(record, dict) or self.key_field not in record or "prediction" not in record:
                raise ValueError(f"{path}, line {number}: expected an object with {self.key_field!r} and "
                                 "'prediction'")
            records.append(record)
        return records

    def done(self) -> Dict[Hashable, Dict[str, Any]]:
        """Every finished row in the merged file and all part files (first record of a key wins)."""
        out: Dict[Hashable, Dict[str, Any]] = {}
        for path in self.files():
            for record in self.read(path):
                out.setdefault(record[self.key_field], record)
        return out

    def open(self) -> None:
        """Open this rank's part file for appending, cutting a torn last line first."""
        os.makedirs(self.out_dir, exist_ok=True)
        if os.path.exists(self.part_path):
            with open(self.part_path, "rb+") as f:
                data = f.read()
                keep = data.rfind(b"\n") + 1  # 0 when no line is complete
                if keep != len(data):
                    f.truncate(keep)
        self._file = open(self.part_path, "a", encoding="utf-8")

    def append(self, results: Sequence[Generated]) -> None:
        lines = []
        for g in results:
            record: Dict[str, Any] = {self.key_field: g.key, "prediction": g.prediction,
                                      "prompt_tokens": g.prompt_tokens, "new_tokens": g.new_tokens}
            if g.error:
                record["error"] = g.error
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        # one write per batch, flushed: a killed process loses nothing written, and a crash mid-write
        # tears at most the last line (no fsync: surviving a power cut is not worth a disk sync per batch)
        self._file.write("".join(lines))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def merge(self, keys: Sequence[Hashable]) -> Dict[Hashable, Dict[str, Any]]:
        """Write every known row of ``keys`` to the merged file in that order; drop the part files."""
        done = self.done()
        tmp = self.merged_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for key in keys:
                if key in done:
                    f.write(json.dumps(done[key], ensure_ascii=False) + "\n")
        os.replace(tmp, self.merged_path)  # the parts are deleted only once the merged file is whole
        for path in self.files():
            if path != self.merged_path:
                os.remove(path)
        return {k: done[k] for k in keys if k in done}

    def clear(self) -> None:
        for path in self.files() + [os.path.join(self.out_dir, META_FILE)]:
            if os.path.exists(path):
                os.remove(path)


def check_fingerprint(out_dir: str, fingerprint: Mapping[str, Any], overwrite: bool, key_field: str) -> None:
    """Start fresh, resume the same run, or refuse to mix two runs' predictions in one directory."""
    store = PredictionStore(out_dir, key_field)
    meta_path = os.path.join(out_dir, META_FILE)
    if overwrite:
        store.clear()
    elif store.files():
        old = None
        if os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                old = json.load(f)
        if old != json.loads(json.dumps(fingerprint)):
            diff = sorted(k for k in set(old or {}) | set(fingerprint) if (old or {}).get(k) != fingerprint.get(k))
            raise ValueError(f"{out_dir} holds predictions of a different run ({', '.join(diff) or 'no record of it'} "
                             f"differ); use a new --out directory or pass --overwrite to start over")
    os.makedirs(out_dir, exist_ok=True)
    write_json(meta_path, dict(fingerprint))
