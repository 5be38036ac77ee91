"""The MMBench prompt, built as VLMEvalKit's ImageMCQDataset.build_prompt builds it (prompt version 1).

    Hint: {hint}\n            (only when the row has a hint)
    Question: {question}\n
    Options:\nA. {A}\nB. {B}\n...
    Please select the correct answer from the options above. \n

The Shapes world renders its multiple-choice training questions with this same function, so a model
trained on them is asked in exactly the format it is evaluated in.
"""
from __future__ import annotations

import math
import string
from typing import Any, Dict, List, Mapping, Tuple

PROMPT_VERSION = "vlmevalkit-mcq-v1"


def _missing(value: Any) -> bool:
    # An empty cell is a missing option; the literal texts "None", "NA", "nan" are real options
    # (the loader reads the TSV with keep_default_na=False so they arrive here as strings).
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def row_options(row: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """The (letter, text) options of a row, in letter order, skipping absent letters."""
    return [(c, str(row[c])) for c in string.ascii_uppercase if c in row and not _missing(row[c])]


def build_mmbench_prompt(row: Mapping[str, Any]) -> str:
    options = row_options(row)
    hint = row.get("hint")
    prompt = ""
    if not _missing(hint) and str(hint) != "":
        prompt += f"Hint: {hint}\n"
    prompt += f"Question: {row['question']}\n"
    if options:
        prompt += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options)
        prompt += "Please select the correct answer from the options above. \n"
    return prompt


def options_dict(row: Mapping[str, Any]) -> Dict[str, str]:
    return dict(row_options(row))
