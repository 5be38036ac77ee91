"""MMBench scoring: CircularEval and vanilla accuracy, by L2 ability and by category.

    from eval.mmbench.data import load_mmbench_tsv, load_predictions
    from eval.mmbench.score import score_mmbench, format_mmbench_table, write_mmbench_outputs
    data = load_mmbench_tsv("MMBench_DEV_EN.tsv")
    result = score_mmbench(data, load_predictions("preds.tsv"))
    print(format_mmbench_table(result))
    write_mmbench_outputs(data, result, "out/")     # predictions.tsv (+ scores.json on DEV files)

Follows VLMEvalKit (``vlmeval/dataset/utils/multiple_choice.py``):

* ``mcq_circular_eval`` / ``prefetch_circular_group``: rows are grouped by ``g_index`` when the file has
  that column, else by ``index % 1_000_000``; a group's base row is the one whose index equals its group
  id, and the group counts as one question that is right only when every pass in it is right, each pass
  judged against its own row's ``answer`` (with exact matching, an unreadable pass fails the group, as in
  VLMEvalKit's ``exact_matching`` mode). A group of a single pass counts by that pass. Rows whose group
  has no base row are left out, as VLMEvalKit does, and reported.
* Vanilla accuracy (VLMEvalKit's ``PRINT_VANILLA`` "circ0" numbers): base rows only, each on its own.
* ``report_acc``: ``Overall``, then every ``l2-category`` and then every ``category``, each in sorted order
  of the raw strings, with the six MMBench L2 abilities renamed by ``MMB_abbrs`` (CP, FP-S, FP-C, AR, RR,
  LR); other names are kept as they are. Fractions, not percentages.

Where we differ: predictions are joined to the data file, so a row without a prediction counts as wrong
(VLMEvalKit scores only the rows present in the prediction file, and would judge a group on its remaining
passes); missing rows are reported. Rows with an empty ``answer`` (TEST files) are not scored. A
``split`` column is not used to split the scores.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from data_pipelines.mmbench.extract import extract_choice
from data_pipelines.mmbench.prompt import options_dict

from ..report import format_table, write_scores
from .data import answer_of, parse_index

CIRCULAR_OFFSET = 1_000_000  # VLMEvalKit: pass k of question i has index i + k * 1e6

# VLMEvalKit's MMB_abbrs: the official l2-category strings and the short names papers report.
L2_ABBREVIATIONS = {
    "coarse_perception": "CP",
    "finegrained_perception (instance-level)": "FP-S",
    "finegrained_perception (cross-instance)": "FP-C",
    "attribute_reasoning": "AR",
    "relation_reasoning": "RR",
    "logic_reasoning": "LR",
}
REPORT_COLUMNS = ("l2-category", "category")
PREDICTIONS_FILE = "predictions.tsv"


@dataclass
class RowResult:
    index: int
    group: int
    prediction: Optional[str]  # None: the predictions file has no line for this row
    extracted: str  # option letter, "Z" (refusal) or "" (unreadable)
    hit: Optional[bool]  # None on rows without an answer


@dataclass
class MMBenchResult:
    rows: List[RowResult]  # in data file order
    circular: Optional[Dict[str, float]]  # None when the file has no answers (TEST)
    vanilla: Optional[Dict[str, float]]
    group_hits: Dict[int, bool] = field(default_factory=dict)
    missing: List[int] = field(default_factory=list)  # indices without a prediction
    orphans: List[int] = field(default_factory=list)  # answered rows whose group has no base row
    counts: Dict[str, int] = field(default_factory=dict)


def group_of(row: Mapping[str, object]) -> int:
    g = row.get("g_index")
    if g is not None and str(g).strip() != "":
        return parse_index(g, f"row index {row['index']}, column g_index")
    return int(row["index"]) % CIRCULAR_OFFSET


def accuracy_report(records: Sequence[Tuple[Mapping[str, object], bool]]) -> Dict[str, float]:
    """VLMEvalKit's report_acc on (row, hit) pairs: Overall, L2 abilities, categories."""
    scores = {"Overall": _mean(hit for _, hit in records)}
    for column in REPORT_COLUMNS:
        values = sorted({str(row.get(column, "")) for row, _ in records} - {""})
        for value in values:
            name = L2_ABBREVIATIONS.get(value, value)
            scores[name] = _mean(hit for row, hit in records if str(row.get(column, "")) == value)
    return scores


def _mean(hits) -> float:
    hits = [bool(h) for h in hits]
    return sum(hits) / len(hits) if hits else float("nan")


def score_mmbench(data: Sequence[Mapping[str, object]], predictions: Mapping[int, str],
                  source: str = "predictions") -> MMBenchResult:
    """Extract every row's choice, then score CircularEval and vanilla accuracy where answers exist."""
    known = {int(row["index"]) for row in data}
    unknown = sorted(set(predictions) - known)
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(f"{source}: {len(unknown)} prediction index(es) not in the data file: {shown}")

    results: List[RowResult] = []
    for row in data:
        index = int(row["index"])
        prediction = predictions.get(index)
        extracted = extract_choice(prediction, options_dict(row)) if prediction is not None else ""
        gold = answer_of(row)
        hit = None if gold is None else (extracted == gold)
        results.append(RowResult(index, group_of(row), prediction, extracted, hit))

    missing = [r.index for r in results if r.prediction is None]
    counts = {
        "rows": len(results),
        "answered_rows": sum(r.hit is not None for r in results),
        "missing_predictions": len(missing),
        "unreadable_predictions": sum(r.prediction is not None and r.extracted == "" for r in results),
        "refusals": sum(r.extracted == "Z" for r in results),
    }
    scored = [(row, r) for row, r in zip(data, results) if r.hit is not None]
    if not scored:
        return MMBenchResult(results, None, None, missing=missing, counts=counts)

    members: Dict[int, List[RowResult]] = {}
    for _, r in scored:
        members.setdefault(r.group, []).append(r)
    base = [(row, r) for row, r in scored if r.index == r.group]
    group_hits = {r.group: all(m.hit for m in members[r.group]) for _, r in base}
    orphans = [r.index for _, r in scored if r.group not in group_hits]

    circular = accuracy_report([(row, group_hits[r.group]) for row, r in base]) if base else None
    vanilla = accuracy_report([(row, bool(r.hit)) for row, r in base]) if base else None
    counts.update({"groups": len(base), "orphan_rows": len(orphans)})
    return MMBenchResult(results, circular, vanilla, group_hits, missing, orphans, counts)


def scores_json(result: MMBenchResult) -> Dict[str, Dict[str, float]]:
    return {"circular": result.circular or {}, "vanilla": result.vanilla or {}}


def format_mmbench_table(result: MMBenchResult) -> str:
    if result.circular is None:
        return f"MMBench: {result.counts['rows']} rows, no answers in the data file (TEST): predictions only."
    rows = [[name, result.circular[name], result.vanilla.get(name, float("nan"))] for name in result.circular]
    text = format_table(["MMBench", "Circular", "Vanilla"], rows)
    c = result.counts
    notes = [f"{c['groups']} questions, {c['answered_rows']} passes scored"]
    if c["missing_predictions"]:
        notes.append(f"{c['missing_predictions']} rows without a prediction (counted wrong)")
    if c["unreadable_predictions"]:
        notes.append(f"{c['unreadable_predictions']} unreadable predictions (counted wrong)")
    if c.get("orphan_rows"):
        notes.append(f"{c['orphan_rows']} rows left out: their circular group has no base row")
    return text + "\n" + "; ".join(notes)


def write_mmbench_outputs(data, result: MMBenchResult, out_dir: str) -> List[str]:
    """``predictions.tsv`` (every row: original columns without ``image``, then prediction, extracted,
    hit, group_hit) and, when the file has answers, ``scores.json``."""
    os.makedirs(out_dir, exist_ok=True)
    if hasattr(data, "columns"):
        columns = list(data.columns)
    else:
        columns = [k for k in (data[0] if len(data) else {"index": 0}) if k != "image"]
    scored = result.circular is not None
    extra = ["prediction", "extracted"] + (["hit", "group_hit"] if scored else [])
    columns = [c for c in columns if c not in extra]
    path = os.path.join(out_dir, PREDICTIONS_FILE)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns + extra)
        for row, r in zip(data, result.rows):
            values = [row.get(c, "") for c in columns] + [r.prediction or "", r.extracted]
            if scored:
                group_hit = result.group_hits.get(r.group)
                values += ["" if r.hit is None else int(r.hit), "" if group_hit is None else int(group_hit)]
            writer.writerow(values)
    written = [path]
    if scored:
        written.append(write_scores(out_dir, scores_json(result)))
    return written
