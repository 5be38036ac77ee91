"""Answer extraction for MMBench without a judge model: which option letter did the model choose?

    from data_pipelines.mmbench.extract import extract_choice
    extract_choice("Answer: B", {"A": "cat", "B": "dog"})   # -> "B"
    extract_choice("I refuse", {"A": "cat", "B": "dog"})    # -> ""  (unparseable: counts as wrong)

Follows VLMEvalKit's exact matching (``vlmeval/utils/matching_util.py``, ``can_infer`` = ``can_infer_option``
and, when that finds nothing, ``can_infer_text``) rule for rule:

* ``can_infer_option``: a response holding "Failed to obtain answer via API" is not parsed as an option;
  one of the known refusal sentences gives ``"Z"``; the characters ``.()[],:;!*#{}`` become spaces and the
  response is split on whitespace; when exactly one option letter is a whole token and its first
  occurrence is among the last four tokens, that letter wins; when no option letter is a token but a lone
  ``Z`` is, the answer is ``"Z"``; otherwise (several letters, or a lone letter early in a long response)
  the first "answer is X" / "correct answer is **X**" (case-insensitive, X in A-D) decides.
* ``can_infer_text``: when the lower-cased response is at most twice as long as all option texts together
  and exactly one option's lower-cased text is a substring of it, that option wins.

Where we deliberately differ:

* Nothing is random and no judge model is asked: what exact matching cannot read is ``""`` and counts as
  wrong. (VLMEvalKit's ``exact_matching`` mode also scores it wrong, via a ``"Z"`` placeholder; its judge
  mode asks GPT and finally picks a random letter.)
* VLMEvalKit rejects a lone "A" in responses longer than three tokens ("A" as an article) only when the
  ``VERBOSE`` environment variable is set; we follow its default (the variable unset), independent of the
  environment.
* Option texts are never mutated (VLMEvalKit lower-cases the caller's dict in place).
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

REFUSAL = "Z"  # what VLMEvalKit reports for a refusal or an explicit "none of these"

_API_FAILURE = "Failed to obtain answer via API"
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_PUNCTUATION = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
# "The correct answer is **B**", "the answer is c": only A-D, as in VLMEvalKit (no word boundary after
# the letter, so "the answer is apple" reads as A; kept to match its scores row for row).
_ANSWER_IS = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([abcd])\**", re.IGNORECASE)


def can_infer_option(response: str, choices: Mapping[str, object]) -> Optional[str]:
    """The option letter named in ``response`` (or ``"Z"`` for a refusal), else None."""
    if _API_FAILURE in response:
        return None
    if any(sentence in response for sentence in _REFUSALS):
        return REFUSAL
    tokens = response.translate(_PUNCTUATION).split()
    named = [letter for letter in choices if letter in tokens]
    if len(named) == 1:
        letter = named[0]
        # Only a letter near the end counts: "A is wrong because ..." names A without choosing it.
        if tokens.index(letter) > len(tokens) - 5:
            return letter
    elif not named and REFUSAL in tokens:
        return REFUSAL
    match = _ANSWER_IS.search(response)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def can_infer_text(response: str, choices: Mapping[str, object]) -> Optional[str]:
    """The single option whose text appears in ``response`` (case-insensitive), else None."""
    lowered = response.lower()
    # A long free-form answer mentions many things; only short ones are matched by content.
    if len(lowered) > 2 * sum(len(str(text)) for text in choices.values()):
        return None
    found = [letter for letter, text in choices.items() if str(text).lower() in lowered]
    return found[0] if len(found) == 1 else None


def extract_choice(prediction: object, choices: Mapping[str, object]) -> str:
    """The letter the model chose, ``"Z"`` for a refusal, or ``""`` when the prediction cannot be read.

    ``choices`` maps option letters to option texts (``data_pipelines.mmbench.prompt.options_dict(row)``).
    """
    response = "" if prediction is None else str(prediction)
    return can_infer_option(response, choices) or can_infer_text(response, choices) or ""
