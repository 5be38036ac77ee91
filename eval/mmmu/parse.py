"""MMMU response parsing and matching, as the official evaluation does it, with a reproducible fallback.

    from eval.mmmu.parse import parse_multi_choice, parse_open_response, eval_multi_choice, eval_open
    parse_multi_choice("The answer is (B).", {"A": "cat", "B": "dog"}, sample_id="validation_Art_1")
    # -> MultiChoiceParse(choice='B', method='bracket')
    eval_open("3.5", parse_open_response("so the answer is 3.5"))   # -> True

Follows ``mmmu/utils/eval_utils.py`` of MMMU-Benchmark/MMMU:

* ``parse_multi_choice`` = ``parse_multi_choice_response``: strip , . ! ? ; : ' from both ends (one
  character kind after the other), pad with spaces, then look for "(A)" style letters; if none, for
  letters standing alone between spaces; if none and the response has more than five words, for option
  texts (case-insensitive). Several candidates: the one whose last occurrence is latest wins (ties go to
  the earlier letter). Nothing found: a random letter.
* ``parse_open_response``: lower-case, split into lines, keep from each line the shortest tail after an
  indicator ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ", and "=" on
  the last line), add every number found in those tails, and normalise all of them (numbers -> floats
  rounded to 2 decimals, commas dropped; strings lower-cased; one-character strings padded with a space
  on one side so they do not match inside words). ``eval_open`` is right when a parsed number equals a
  normalised gold number or a normalised gold string is a substring of a parsed string.
  (The official code also splits at ". " before a capital letter, but after lower-casing; that split
  never happens, so only lines split, here as there.)

Where we differ: the official fallback draws from Python's global ``random`` (seeded 42 at import), so a
row's letter depends on how many rows fell back before it. Ours draws from a generator seeded by
sha256("<seed>:<question id>"), so it is the same whatever the order, batch or shard. Parsed open answers
keep first-seen order instead of set order (the verdict does not depend on the order). A multiple-choice
row without options parses to "" instead of raising.
"""
from __future__ import annotations

import hashlib
import random
import re
from typing import List, Mapping, NamedTuple, Sequence, Union

DEFAULT_SEED = 42  # the official scripts seed Python's random with 42

Parsed = Union[str, float]

_EDGE_PUNCTUATION = (",", ".", "!", "?", ";", ":", "'")
_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL_TAILS = {":", ",", ".", "!", "?", ";", "'"}

_NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")  # 1,000  -12,345,678
_NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")  # 1e-3  6.02E23
_NUMBER_PLAIN = re.compile(
    r"""-?(?:\d+\.\d+ | \.\d+ | \d+\b)   # 3.5  .5  42
        (?![eE][+-]?\d+)                # not the mantissa of a scientific number
        (?![,\d])                       # not a piece of a comma-grouped number""",
    re.VERBOSE,
)


class MultiChoiceParse(NamedTuple):
    choice: str  # the letter, or "" when there are no options
    method: str  # "bracket" | "letter" | "text" | "random" | "none"


def fallback_choice(letters: Sequence[str], sample_id: str, seed: int = DEFAULT_SEED) -> str:
    """The random letter for an unreadable response: fixed by (seed, question id) alone."""
    key = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return random.Random(int.from_bytes(key[:8], "big")).choice(list(letters))


def parse_multi_choice(response: object, index2ans: Mapping[str, str], sample_id: str,
                       seed: int = DEFAULT_SEED) -> MultiChoiceParse:
    letters = list(index2ans)
    if not letters:
        return MultiChoiceParse("", "none")
    text = "" if response is None else str(response)
    for ch in _EDGE_PUNCTUATION:
        text = text.strip(ch)
    padded = f" {text} "  # so that " A " also matches at the very start or end

    candidates = [c for c in letters if f"({c})" in padded]
    method = "bracket"
    if not candidates:
        candidates, method = [c for c in letters if f" {c} " in padded], "letter"
    if not candidates and len(padded.split()) > 5:
        lowered = padded.lower()
        candidates = [c for c in letters if str(index2ans[c]).lower() in lowered]
        method = "text"
    if not candidates:
        return MultiChoiceParse(fallback_choice(letters, sample_id, seed), "random")
    if len(candidates) == 1:
        return MultiChoiceParse(candidates[0], method)

    if method == "bracket":
        last = [padded.rfind(f"({c})") for c in candidates]
    elif method == "letter":
        last = [padded.rfind(f" {c} ") for c in candidates]
    else:
        last = [padded.lower().rfind(str(index2ans[c]).lower()) for c in candidates]
    return MultiChoiceParse(candidates[last.index(max(last))], method)


def is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize_str(text: str) -> List[Parsed]:
    text = text.strip()
    if is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    # A one-letter answer must not match inside a word, so it only matches with a space on one side.
    return [" " + text, text + " "] if len(text) == 1 else [text]


def extract_numbers(text: str) -> List[str]:
    return _NUMBER_WITH_COMMAS.findall(text) + _NUMBER_SCIENTIFIC.findall(text) + _NUMBER_PLAIN.findall(text)


def _key_subresponses(response: str) -> List[str]:
    text = response.strip().strip(".").lower()
    lines = text.split("\n")
    keys = []
    for number, line in enumerate(lines):
        indicators = _INDICATORS + (("=",) if number == len(lines) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in line:
                tail = line.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL_TAILS:
            keys.append(shortest)
    return keys or [text]


def parse_open_response(response: object) -> List[Parsed]:
    """Candidate answers (normalised strings and floats) in first-seen order, without duplicates."""
    keys = _key_subresponses("" if response is None else str(response))
    candidates = keys + [n for key in keys for n in extract_numbers(key)]
    normalised = [item for c in candidates for item in normalize_str(c)]
    return list(dict.fromkeys(normalised))


def _as_list(gold: Union[str, Sequence[str]]) -> List[str]:
    return [gold] if isinstance(gold, str) else list(gold)


def eval_multi_choice(gold: Union[str, Sequence[str]], parsed: str) -> bool:
    return any(answer == parsed for answer in _as_list(gold))


def eval_open(gold: Union[str, Sequence[str]], parsed: Sequence[Parsed]) -> bool:
    answers = [n for answer in _as_list(gold) for n in normalize_str(str(answer))]
    for candidate in parsed:
        if isinstance(candidate, str):
            if any(isinstance(a, str) and a in candidate for a in answers):
                return True
        elif candidate in answers:
            return True
    return False
