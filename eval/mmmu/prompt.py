"""The MMMU prompt, with each image placed where the question refers to it.

    from eval.mmmu.prompt import build_mmmu_prompt
    text, images = build_mmmu_prompt(row)   # row from eval.mmmu.data.load_mmmu
    # "Which of <image> and <image> ...?\n(A) ...\n(B) <image>\n\nAnswer with the option's letter ..."
    # images: the PIL images in the order their <image> tokens appear

Text follows the official MMMU prompt (``mmmu/utils/data_utils.py`` ``construct_prompt`` with
``mmmu/configs/llava1.5.yaml``, whose YAML folds to)::

    multiple-choice:  "{question}\\n(A) {o1}\\n(B) {o2}\\n\\n"
                      "Answer with the option's letter from the given choices directly."
    open:             "{question}\\nAnswer the question using a single word or phrase."

Images follow VLMEvalKit (``vlmeval/dataset/image_mcq.py`` ``MMMUDataset.split_MMMU``): every
``<image N>`` placeholder, in the question or in an option, becomes one image token in place, in order
of appearance, and brings image_N with it; an image referred to twice is given twice, and images no
placeholder mentions are not given. A row with images but no placeholder gets all its images first,
one ``<image>\\n`` each, like VLMEvalKit's image-then-text message. We differ from the official MMMU
script (it passes only image_1 and leaves the placeholder text in the prompt) and from lmms-eval (it
replaces each placeholder with ``<image>`` but passes each image once, sorted by number, so a repeated or
out-of-order reference gets the wrong image or a token with no image).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple

from mllm.constants import IMAGE_TOKEN

from .data import IMAGE_COLUMNS, decode_image, parse_options

PROMPT_VERSION = "mmmu-official-v1"
MULTI_CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
_PLACEHOLDER = re.compile(r"<image (\d+)>")


def is_multiple_choice(row: Mapping[str, Any]) -> bool:
    return row.get("question_type") == "multiple-choice"


def choice_letters(options: List[str]) -> List[str]:
    return [chr(ord("A") + i) for i in range(len(options))]


def index_to_answer(options: List[str]) -> Dict[str, str]:
    """MMMU's index2ans: {"A": first option text, ...}."""
    return dict(zip(choice_letters(options), options))


def row_options(row: Mapping[str, Any]) -> List[str]:
    """The options of a loaded row (a list), or of a raw dataset row (a string holding a list)."""
    return parse_options(row.get("options"), row.get("_where", f"id {row.get('id')}"))


def build_mmmu_text(row: Mapping[str, Any]) -> str:
    """The official prompt text, ``<image N>`` placeholders still in it."""
    question = str(row["question"])
    if is_multiple_choice(row):
        listing = "".join(f"({letter}) {option}\n" for letter, option in index_to_answer(row_options(row)).items())
        return f"{question}\n{listing}\n{MULTI_CHOICE_INSTRUCTION}"
    return f"{question}\n{OPEN_INSTRUCTION}"


def build_mmmu_prompt(row: Mapping[str, Any], image_token: str = IMAGE_TOKEN) -> Tuple[str, list]:
    """(prompt text with one ``image_token`` per image, decoded images in token order)."""
    text = build_mmmu_text(row)
    where = row.get("_where", f"id {row.get('id')}")
    root = row.get("_root")
    numbers = [int(n) for n in _PLACEHOLDER.findall(text)]
    if not numbers:
        present = [c for c in IMAGE_COLUMNS if row.get(c) is not None]
        images = [decode_image(row[c], f"{where}, {c}", root) for c in present]
        return "".join(f"{image_token}\n" for _ in images) + text, images

    decoded: Dict[int, Any] = {}  # decode each image once even when it is referred to twice
    images = []
    for n in numbers:
        column = f"image_{n}"
        if n not in decoded:
            if row.get(column) is None:
                raise ValueError(f"{where}: the prompt refers to <image {n}> but {column} is empty")
            decoded[n] = decode_image(row[column], f"{where}, {column}", root)
        images.append(decoded[n])
    return _PLACEHOLDER.sub(image_token, text), images
