"""MMMU-style items over 1-3 Shapes-world scenes (the ``mmmu_*.parquet`` files of the world).

    item = mmmu_item(scenes, rng)   # MMMUItem: a real MMMU subject, <image N> placeholders, options or open

Multiple-choice items carry their options and a letter answer; open items a text answer (or a str(list)
of acceptable texts), as MMMU's own rows do.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from data_pipelines.shapes.scene import COLOURS, PLURALS, Scene
from data_pipelines.shapes.tasks import LETTERS_ABCD, NUMBER_WORDS, _unique_by, article

@dataclass(frozen=True)
class MMMUItem:
    subject: str                # a real MMMU subject name
    subfield: str
    question: str               # with <image 1> ... placeholders, one per scene
    options: Tuple[str, ...]    # empty for open questions
    answer: str                 # letter (multiple choice), text, or a str(list) of acceptable texts
    explanation: str
    scenes: Tuple[Scene, ...]
    difficulty: str

    @property
    def question_type(self) -> str:
        return "multiple-choice" if self.options else "open"


# MMMU subject -> (its discipline, the subfield used here)
MMMU_SUBJECTS = {"Math": ("Science", "Geometry"), "Design": ("Art and Design", "Graphic Design"),
                 "Computer_Science": ("Tech and Engineering", "Artificial Intelligence")}
_DIFFICULTY = {1: "Easy", 2: "Medium", 3: "Hard"}


def _mc(options: List[str], answer: str, rng: random.Random) -> Tuple[Tuple[str, ...], str]:
    rng.shuffle(options)
    return tuple(options), LETTERS_ABCD[options.index(answer)]


def _mmmu_total(scenes: Sequence[Scene], rng: random.Random) -> Optional[MMMUItem]:
    a, b = scenes[:2]
    total = len(a.shapes) + len(b.shapes)
    # Like MMMU, some open answers list every acceptable spelling.
    answer = str([str(total), NUMBER_WORDS[total]]) if rng.random() < 0.3 else str(total)
    return MMMUItem("Math", MMMU_SUBJECTS["Math"][1],
                    "<image 1> and <image 2> each show some shapes. "
                    "How many shapes are there in total in the two images?", (), answer,
                    f"<image 1> has {len(a.shapes)} and <image 2> has {len(b.shapes)}: {total} in total.",
                    (a, b), _DIFFICULTY[2])


def _mmmu_kind_count(scenes: Sequence[Scene], rng: random.Random) -> Optional[MMMUItem]:
    trio = scenes[:3]
    kind = rng.choice(sorted({s.kind for sc in trio for s in sc.shapes}))
    n = sum(s.kind == kind for sc in trio for s in sc.shapes)
    marks = ", ".join(f"<image {i}>" for i in range(1, len(trio))) + f" and <image {len(trio)}>"
    return MMMUItem("Math", MMMU_SUBJECTS["Math"][1],
                    f"How many {PLURALS[kind]} are there in {marks} together?", (), str(n),
                    f"Counting {PLURALS[kind]} in every image gives {n}.", tuple(trio), _DIFFICULTY[len(trio)])


def _mmmu_common_colour(scenes: Sequence[Scene], rng: random.Random) -> Optional[MMMUItem]:
    a, b = scenes[:2]
    common = {s.colour for s in a.shapes} & {s.colour for s in b.shapes}
    if len(common) != 1:
        return None
    answer = common.pop()
    wrong = [c for c in COLOURS if c != answer]
    options, letter = _mc([answer] + rng.sample(wrong, 3), answer, rng)
    return MMMUItem("Design", MMMU_SUBJECTS["Design"][1],
                    "Which colour is used in both <image 1> and <image 2>?", options, letter,
                    f"Only {answer} appears in both images.", (a, b), _DIFFICULTY[2])


def _mmmu_colour_of(scenes: Sequence[Scene], rng: random.Random) -> Optional[MMMUItem]:
    shapes = _unique_by(scenes[0], "kind")
    if not shapes:
        return None
    s = rng.choice(shapes)
    options, letter = _mc([s.colour] + rng.sample([c for c in COLOURS if c != s.colour], 3), s.colour, rng)
    return MMMUItem("Design", MMMU_SUBJECTS["Design"][1], f"What colour is the {s.kind} in <image 1>?",
                    options, letter, f"The {s.kind} is {s.colour}.", (scenes[0],), _DIFFICULTY[1])


def _mmmu_which_image(scenes: Sequence[Scene], rng: random.Random) -> Optional[MMMUItem]:
    trio = scenes[:3]
    if len(trio) < 3:
        return None
    names = [{s.name for s in sc.shapes} for sc in trio]
    only = [(i, n) for i, ns in enumerate(names) for n in sorted(ns) if sum(n in o for o in names) == 1]
    if not only:
        return None
    i, name = rng.choice(only)
    ordinals = ["the first image", "the second image", "the third image"]
    options, letter = _mc(list(ordinals), ordinals[i], rng)
    return MMMUItem("Computer_Science", MMMU_SUBJECTS["Computer_Science"][1],
                    f"Here are three images: <image 1>, <image 2> and <image 3>. "
                    f"Which image contains {article(name)}?", options, letter,
                    f"Only {ordinals[i]} contains {article(name)}.", tuple(trio), _DIFFICULTY[3])


def _mmmu_ocr(scenes: Sequence[Scene], rng: random.Random) -> Optional[MMMUItem]:
    labelled = [sc for sc in scenes if sc.label is not None]
    if not labelled:
        return None
    sc = labelled[0]
    return MMMUItem("Computer_Science", MMMU_SUBJECTS["Computer_Science"][1],
                    "<image 1> What text is written in the image?", (), sc.label.text,
                    f"The image reads {sc.label.text}.", (sc,), _DIFFICULTY[1])


MMMU_MAKERS = (_mmmu_total, _mmmu_kind_count, _mmmu_common_colour, _mmmu_colour_of, _mmmu_which_image,
               _mmmu_ocr)


def mmmu_item(scenes: Sequence[Scene], rng: random.Random) -> Optional[MMMUItem]:
    """One MMMU-style item about the first 1-3 of ``scenes`` (a random applicable kind), or None."""
    makers = list(MMMU_MAKERS)
    rng.shuffle(makers)
    for make in makers:
        if len(scenes) >= 2 or make in (_mmmu_colour_of, _mmmu_ocr):
            item = make(scenes, rng)
            if item is not None:
                return item
    return None
