"""Run a model on MMBench: one question per TSV row, the row's image(s) first, then the VLMEvalKit prompt.

    from eval.mmbench.data import load_mmbench_tsv
    from eval.mmbench.run import mmbench_question, predict_mmbench
    data = load_mmbench_tsv("MMBench_DEV_EN.tsv")
    mmbench_question(data, data[0]).text   # "<image>\\nQuestion: ...\\nOptions:\\nA. ...\\nPlease select ..."
    outcome = predict_mmbench(generator, data, "out/", batch_size=8)   # see eval.runner.run_predictions

The circular passes of a question (same ``g_index``, or index modulo 1e6) are run side by side on one
rank, so they share a batch and the prefill of their common prompt prefix (image and question).

The user turn is ``"<image>\\n"`` per image followed by ``build_mmbench_prompt(row)``, the layout LLaVA's
MMBench script and VLMEvalKit's LLaVA wrapper use, and the one the Shapes world trains its multiple-choice
questions with. Images go through ``data_pipelines.images.load_image`` (EXIF orientation, RGB, size guard)
like training images; a row whose image cannot be read gets an empty prediction and is reported.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

from data_pipelines.images import load_image
from data_pipelines.mmbench.prompt import build_mmbench_prompt
from eval.mmbench.score import group_of
from eval.runner import Question, RunOutcome, run_predictions

IMAGE_PREFIX = "<image>\n"


def mmbench_question(data, row) -> Question:
    index = int(row["index"])
    images = []
    for k, cell in enumerate(data.image_strings(index)):
        try:
            raw = base64.b64decode(cell, validate=False)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"{data.path}, row index {index}: image {k} is not base64 ({e})") from None
        try:
            images.append(load_image(raw))
        except ValueError as e:
            raise ValueError(f"{data.path}, row index {index}, image {k}: {e}") from None
    return Question(index, IMAGE_PREFIX * len(images) + build_mmbench_prompt(row), images)


def predict_mmbench(generator, data, out_dir: str, **kwargs: Any) -> RunOutcome:
    """``eval.runner.run_predictions`` over every row of ``data`` (an ``MMBenchData``), keyed by index."""
    keys = [int(row["index"]) for row in data]
    groups = [group_of(row) for row in data]  # a question's circular passes run side by side
    return run_predictions(generator, keys, lambda p: mmbench_question(data, data[p]), out_dir,
                           key_field="index", group_of=groups.__getitem__, **kwargs)
