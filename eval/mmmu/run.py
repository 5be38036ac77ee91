"""Run a model on MMMU: the official prompt with each ``<image N>`` placeholder turned into an image.

    from eval.mmmu.data import load_mmmu
    from eval.mmmu.run import mmmu_question, predict_mmmu
    rows = load_mmmu("MMMU/", split="validation")
    outcome = predict_mmmu(generator, rows, "out/", batch_size=8)   # see eval.runner.run_predictions

``eval.mmmu.prompt.build_mmmu_prompt`` already places one ``<image>`` marker per image where the question
refers to it, so its text is the user turn as it is. Rows are keyed by their ``id``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from eval.mmmu.prompt import build_mmmu_prompt
from eval.runner import Question, RunOutcome, run_predictions


def mmmu_question(row: Mapping[str, Any]) -> Question:
    text, images = build_mmmu_prompt(row)
    return Question(str(row["id"]), text, images)


def predict_mmmu(generator, rows: Sequence[Mapping[str, Any]], out_dir: str, **kwargs: Any) -> RunOutcome:
    """``eval.runner.run_predictions`` over MMMU rows (from ``load_mmmu``), keyed by id."""
    keys = [str(row["id"]) for row in rows]
    return run_predictions(generator, keys, lambda p: mmmu_question(rows[p]), out_dir, key_field="id", **kwargs)
