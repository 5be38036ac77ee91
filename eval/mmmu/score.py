"""MMMU scoring: parse every response, judge it, and report accuracy by subject, discipline and overall.

    from eval.mmmu.data import load_mmmu
    from eval.mmmu.score import load_mmmu_predictions, score_mmmu, format_mmmu_table, write_mmmu_outputs
    rows = load_mmmu("MMMU/", split="validation")
    result = score_mmmu(rows, load_mmmu_predictions("output.json"))    # {id: response}
    print(format_mmmu_table(result))
    write_mmmu_outputs(result, "out/")   # scores.json, predictions.jsonl, submission.json (test rows)

Follows MMMU's ``main_parse_and_eval.py`` / ``main_eval_only.py`` / ``print_results.py``:
multiple-choice responses go through ``parse_multi_choice_response`` (a bare letter, as the official
output file stores it, parses to itself), open ones through ``parse_open_response``; a subject's accuracy
is its share of correct rows, and a discipline's and the overall accuracy are instance-weighted
(``calculate_ins_level_acc``: total correct over total rows). ``scores.json`` is
``{"Overall": f, "<discipline>": f, "<subject>": f, ...}``: fractions, disciplines in the paper's order
each followed by its subjects; subjects outside MMMU's table count in Overall only.

Rows whose answer is hidden ("?" on the test split) are not scored; they go into ``submission.json`` in the
official output format: the parsed letter for multiple-choice rows, the response itself for open rows
(the official evaluator parses those); rows without a prediction are left out of it and reported.
Where we differ: a data row without a prediction counts as wrong
and is reported (the official script scores only the ids in the output file); a discipline with no rows
is left out rather than shown as 0.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..report import format_table, write_json, write_scores
from .data import DISCIPLINES, SUBJECT_TO_DISCIPLINE, gold_answer, subject_of
from .parse import (DEFAULT_SEED, eval_multi_choice, eval_open, parse_multi_choice,
                    parse_open_response)
from .prompt import index_to_answer, is_multiple_choice, row_options

ROWS_FILE = "predictions.jsonl"
SUBMISSION_FILE = "submission.json"


@dataclass
class RowResult:
    id: str
    subject: str
    question_type: str
    answer: Optional[Union[str, List[str]]]  # None: hidden (test split)
    response: Optional[str]  # None: no prediction for this id
    parsed: Union[str, List[Union[str, float]]]  # letter (multiple-choice) or candidates (open)
    method: str  # how a multiple-choice letter was found; "open" for open questions
    correct: Optional[bool]  # None when the answer is hidden


@dataclass
class MMMUResult:
    rows: List[RowResult]
    scores: Optional[Dict[str, float]]  # None when no row has an answer
    num: Dict[str, int] = field(default_factory=dict)  # rows behind each score
    missing: List[str] = field(default_factory=list)
    submission: Optional[Dict[str, str]] = None  # {id: answer} for rows with hidden answers
    counts: Dict[str, int] = field(default_factory=dict)


def load_mmmu_predictions(path: str) -> Dict[str, str]:
    """The official output file: a JSON object ``{id: response}``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"predictions file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping question id -> response, "
                         f"got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if value is not None and not isinstance(value, (str, int, float)):
            raise ValueError(f"{path}, id {key}: response must be a string, got {type(value).__name__}")
        out[str(key)] = "" if value is None else str(value)
    return out


def _judge(row: Mapping[str, Any], response: Optional[str], seed: int) -> RowResult:
    gold = gold_answer(row)
    if is_multiple_choice(row):
        if response is None:
            parsed, method = "", "missing"
        else:
            parsed, method = parse_multi_choice(response, index_to_answer(row_options(row)), row["id"], seed)
        correct = None if gold is None else (response is not None and eval_multi_choice(gold, parsed))
    else:
        parsed, method = ([] if response is None else parse_open_response(response)), "open"
        correct = None if gold is None else (response is not None and eval_open(gold, parsed))
    subject = row.get("subject") or subject_of(row["id"])
    return RowResult(row["id"], subject, str(row.get("question_type")), gold, response, parsed,
                     method, correct)


def score_mmmu(rows: Sequence[Mapping[str, Any]], predictions: Mapping[str, str], seed: int = DEFAULT_SEED,
               source: str = "predictions") -> MMMUResult:
    known = {row["id"] for row in rows}
    unknown = sorted(set(predictions) - known)
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(f"{source}: {len(unknown)} id(s) not in the data: {shown}")

    results = [_judge(row, predictions.get(row["id"]), seed) for row in rows]
    missing = [r.id for r in results if r.response is None]
    hidden = [r for r in results if r.correct is None]
    submission = None
    if hidden:
        submission = {r.id: (r.parsed if r.method != "open" else r.response)
                      for r in hidden if r.response is not None}
    counts = {
        "rows": len(results),
        "answered_rows": len(results) - len(hidden),
        "missing_predictions": len(missing),
        "random_fallbacks": sum(r.method == "random" for r in results),
    }
    scores, num = _aggregate([r for r in results if r.correct is not None])
    return MMMUResult(results, scores, num, missing, submission, counts)


def _aggregate(scored: Sequence[RowResult]):
    if not scored:
        return None, {}
    by_subject: Dict[str, List[bool]] = {}
    for r in scored:
        by_subject.setdefault(r.subject, []).append(bool(r.correct))

    scores: Dict[str, float] = {}
    num: Dict[str, int] = {}

    def put(name: str, hits: List[bool]) -> None:
        scores[name] = sum(hits) / len(hits)
        num[name] = len(hits)

    put("Overall", [h for hits in by_subject.values() for h in hits])
    for discipline, subjects in DISCIPLINES.items():
        present = [s for s in subjects if s in by_subject]
        if present:
            put(discipline, [h for s in present for h in by_subject[s]])
            for s in present:
                put(s, by_subject[s])
    for s in sorted(set(by_subject) - set(SUBJECT_TO_DISCIPLINE)):
        put(s, by_subject[s])
    return scores, num


def format_mmmu_table(result: MMMUResult) -> str:
    c = result.counts
    if result.scores is None:
        return f"MMMU: {c['rows']} rows, answers hidden (test split): wrote the submission file only."
    rows = []
    for name, value in result.scores.items():
        label = name if name == "Overall" or name in DISCIPLINES or name not in SUBJECT_TO_DISCIPLINE else f"  {name}"
        rows.append([label, result.num[name], value])
    notes = [f"{c['answered_rows']} questions scored"]
    if c["missing_predictions"]:
        notes.append(f"{c['missing_predictions']} without a prediction (counted wrong)")
    if c["random_fallbacks"]:
        notes.append(f"{c['random_fallbacks']} multiple-choice responses unreadable (seeded random letter)")
    return format_table(["MMMU", "Num", "Acc"], rows) + "\n" + "; ".join(notes)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_mmmu_outputs(result: MMMUResult, out_dir: str) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    path = os.path.join(out_dir, ROWS_FILE)
    with open(path, "w", encoding="utf-8") as f:
        for r in result.rows:
            record = {"id": r.id, "subject": r.subject, "question_type": r.question_type, "answer": r.answer,
                      "response": r.response, "parsed": _json_safe(r.parsed), "method": r.method,
                      "correct": r.correct}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    written.append(path)
    if result.scores is not None:
        written.append(write_scores(out_dir, result.scores))
    if result.submission is not None:
        written.append(write_json(os.path.join(out_dir, SUBMISSION_FILE), result.submission))
    return written
