"""What is said about a Shapes-world scene: captions, descriptions, questions and multiple-choice rows.

    rng = scene_rng(seed, "train", i, "tasks")
    caption(scene, rng)                 # "a red circle and a blue square."
    describe(scene)                     # "The image shows two shapes on a light background: ..."
    qs = image_questions(scene, rng)    # one Question per applicable type, targets drawn at random
    pair_questions(scene_a, scene_b, rng), text_only_questions(rng)   # MMMU items: shapes.mmmu_items

Every question is unambiguous by construction: a shape is named "the red circle" (colour-kind pairs are
unique in a scene), "the circle" only when it is the only circle; left/right/above/below are asked only
where the two shapes' pixel extents do not overlap along that axis, "which is bigger" only between size
classes with 1.5x the pixels, "closest" only with a clear winner. Short answers use the closed vocabulary
(colour, kind, size and position words, digits, yes/no, the label text); ``sentence`` is the same fact as
a sentence for the multi-turn instruction data. Multiple-choice questions carry an official MMBench
category; their options are the answer plus distractors, sampled into A-D by ``shapes.turns.mc_row``.
"""
from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from data_pipelines.shapes.scene import (COLOURS, CORNERS, KINDS, LETTERS, PLURALS, REGIONS, SIZES, WORDS, Scene,
                                         Shape, cell_rect)

# official MMBench category -> its l2-category
L2_OF: Dict[str, str] = {
    "image_topic": "coarse_perception",
    "attribute_recognition": "finegrained_perception (instance-level)",
    "object_localization": "finegrained_perception (instance-level)",
    "ocr": "finegrained_perception (instance-level)",
    "spatial_relationship": "finegrained_perception (cross-instance)",
    "attribute_comparison": "finegrained_perception (cross-instance)",
    "physical_property_reasoning": "attribute_reasoning",
    "physical_relation": "relation_reasoning",
    "future_prediction": "logic_reasoning",
}
PLACE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "center": "in the center"}
RELATION = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
CORNERS_OF = {"circle": 0, "triangle": 3, "square": 4, "star": 10, "cross": 12}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
LETTERS_ABCD = "ABCD"
BIGGER_RATIO = 1.5


@dataclass(frozen=True)
class Question:
    type: str                           # e.g. "colour", "position", "ocr"
    question: str
    answer: str                         # short answer
    sentence: str                       # the same fact as a full sentence
    distractors: Tuple[str, ...] = ()   # wrong options; empty: no multiple-choice form
    category: str = ""                  # official MMBench category of the multiple-choice form
    hint: str = ""                      # shown on some multiple-choice rows

    @property
    def is_mc(self) -> bool:
        return bool(self.distractors) and bool(self.category)


# ---- wording helpers -----------------------------------------------------------------------------
def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def join_words(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def count_phrase(n: int, noun: str = "shape", plural: Optional[str] = None) -> str:
    return f"{NUMBER_WORDS[n]} {noun if n == 1 else (plural or noun + 's')}"


def reading_order(scene: Scene) -> List[Shape]:
    return sorted(scene.shapes, key=lambda s: s.cell)


def _unique_by(scene: Scene, attr: str) -> List[Shape]:
    counts = Counter(getattr(s, attr) for s in scene.shapes)
    return [s for s in scene.shapes if counts[getattr(s, attr)] == 1]


def _label_fact(scene: Scene) -> str:
    label = scene.label
    what = "letter" if len(label.text) == 1 else "word"
    if label.corner in CORNERS:
        return f"the {what} {label.text} is written in the {label.corner} corner"
    return f"the {what} {label.text} is written {PLACE[label.corner]}"  # an end cell of a line layout


# ---- captions and descriptions -----------------------------------------------------------------------
def caption(scene: Scene, rng: random.Random) -> str:
    """A short templated caption, e.g. "a red circle and a large blue square." (stage-1 data)."""
    with_size = rng.random() < 0.4
    body = join_words([article(f"{s.size} {s.name}" if with_size else s.name) for s in reading_order(scene)])
    template = rng.choice(("{body}.", "a picture of {body}.", "{count} on a light background: {body}."))
    text = template.format(body=body, count=count_phrase(len(scene.shapes)))
    if scene.label is not None:
        text += f" {_label_fact(scene)}."
    return text


def describe(scene: Scene) -> str:
    """A full description: every shape with size, colour, kind and position, then the label."""
    parts = [f"{article(f'{s.size} {s.name}')} {PLACE[s.position]}" for s in reading_order(scene)]
    text = (f"The image shows {count_phrase(len(scene.shapes))} on a light background: "
            f"{join_words(parts)}.")
    if scene.label is not None:
        fact = _label_fact(scene)
        text += f" {fact[0].upper()}{fact[1:]}."
    return text


# ---- single-image questions ------------------------------------------------------------------------
def _q_colour(scene: Scene, rng: random.Random) -> Optional[Question]:
    shapes = _unique_by(scene, "kind")
    if not shapes:
        return None
    s = rng.choice(shapes)
    return Question("colour", f"What colour is the {s.kind}?", s.colour, f"The {s.kind} is {s.colour}.",
                    tuple(c for c in COLOURS if c != s.colour), "attribute_recognition",
                    "Each shape is drawn in one flat colour.")


def _q_shape(scene: Scene, rng: random.Random) -> Optional[Question]:
    shapes = _unique_by(scene, "colour")
    if not shapes:
        return None
    s = rng.choice(shapes)
    return Question("shape", f"What shape is the {s.colour} object?", s.kind,
                    f"The {s.colour} object is {article(s.kind)}.",
                    tuple(k for k in KINDS if k != s.kind), "attribute_recognition",
                    "The shapes are circles, squares, triangles, stars and crosses.")


def _q_size(scene: Scene, rng: random.Random) -> Question:
    s = rng.choice(scene.shapes)
    return Question("size", f"Is the {s.name} large or small?", s.size, f"The {s.name} is {s.size}.",
                    tuple(z for z in SIZES if z != s.size), "attribute_recognition")


def _q_position(scene: Scene, rng: random.Random) -> Question:
    s = rng.choice(scene.shapes)
    return Question("position", f"Where is the {s.name} in the image?", s.position,
                    f"The {s.name} is {PLACE[s.position]}.",
                    tuple(p for p in REGIONS if p != s.position), "object_localization",
                    "The image is divided into left, right, top, bottom and center regions.")


def _q_count(scene: Scene, rng: random.Random) -> Question:
    n = len(scene.shapes)
    verb = "is" if n == 1 else "are"
    return Question("count", "How many shapes are there in the image?", str(n),
                    f"There {verb} {count_phrase(n)} in the image.")


def _q_count_colour(scene: Scene, rng: random.Random) -> Question:
    present = sorted({s.colour for s in scene.shapes})
    colour = rng.choice(present) if rng.random() < 0.75 else rng.choice(list(COLOURS))
    n = sum(s.colour == colour for s in scene.shapes)
    return Question("count_colour", f"How many {colour} shapes are there?", str(n),
                    f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {colour} "
                    f"shape{'' if n == 1 else 's'}.")


def _q_count_kind(scene: Scene, rng: random.Random) -> Question:
    present = sorted({s.kind for s in scene.shapes})
    kind = rng.choice(present) if rng.random() < 0.75 else rng.choice(KINDS)
    n = sum(s.kind == kind for s in scene.shapes)
    return Question("count_kind", f"How many {PLURALS[kind]} are there?", str(n),
                    f"There {'is' if n == 1 else 'are'} {count_phrase(n, kind, PLURALS[kind])}.")


def _q_exists(scene: Scene, rng: random.Random) -> Question:
    if rng.random() < 0.5:
        s = rng.choice(scene.shapes)
        colour, kind = s.colour, s.kind
    else:
        absent = [(c, k) for c in COLOURS for k in KINDS if scene.shape_named(c, k) is None]
        colour, kind = rng.choice(absent)
    yes = scene.shape_named(colour, kind) is not None
    return Question("exists", f"Is there {article(f'{colour} {kind}')} in the image?", "yes" if yes else "no",
                    f"Yes, there is {article(f'{colour} {kind}')}." if yes
                    else f"No, there is no {colour} {kind}.")


def _q_bigger(scene: Scene, rng: random.Random) -> Optional[Question]:
    # Different size classes and at least 1.5x the pixels: a large thin star next to a small square
    # is not clearly bigger, so that pair is never asked about.
    pairs = [(a, b) for a, b in itertools.permutations(scene.shapes, 2)
             if a.size != b.size and max(a.area, b.area) >= BIGGER_RATIO * min(a.area, b.area)]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    big, small = (a, b) if a.area > b.area else (b, a)
    return Question("bigger", f"Which is bigger, the {a.name} or the {b.name}?", big.name,
                    f"The {big.name} is bigger than the {small.name}.", (small.name,),
                    "attribute_comparison", "Compare the sizes of the two shapes.")


def _separated(a: Shape, b: Shape, axis: int) -> int:
    """-1 if a's pixels lie wholly before b's along axis (0: y, 1: x), 1 if wholly after, else 0."""
    lo, hi = (1, 3) if axis == 0 else (0, 2)
    if a.bbox[hi] <= b.bbox[lo]:
        return -1
    if b.bbox[hi] <= a.bbox[lo]:
        return 1
    return 0


def _q_left_above(scene: Scene, rng: random.Random) -> Optional[Question]:
    # Asked only where the two shapes' pixel extents do not overlap along the axis: a clear yes or no.
    pairs = [(a, b, axis) for a, b in itertools.permutations(scene.shapes, 2) for axis in (0, 1)
             if _separated(a, b, axis)]
    if not pairs:
        return None
    a, b, axis = rng.choice(pairs)
    yes = _separated(a, b, axis) < 0
    rel = "above" if axis == 0 else "to the left of"
    neg = "not above" if axis == 0 else "not to the left of"
    return Question("left_above", f"Is the {a.name} {rel} the {b.name}?", "yes" if yes else "no",
                    f"{'Yes' if yes else 'No'}, the {a.name} is {rel if yes else neg} the {b.name}.")


def _q_relative(scene: Scene, rng: random.Random) -> Optional[Question]:
    # Only pairs apart along exactly one axis (side by side, or one over the other): then exactly one
    # of left/right/above/below is true. Diagonal pairs would make two of them true.
    pairs = [(a, b) for a, b in itertools.permutations(scene.shapes, 2)
             if bool(_separated(a, b, 0)) != bool(_separated(a, b, 1))]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    dy, dx = _separated(a, b, 0), _separated(a, b, 1)
    rel = ("left" if dx < 0 else "right") if dx else ("above" if dy < 0 else "below")
    return Question("relative", f"Where is the {a.name} relative to the {b.name}?", rel,
                    f"The {a.name} is {RELATION[rel]} the {b.name}.",
                    tuple(r for r in RELATION if r != rel), "spatial_relationship",
                    "Compare where the two shapes are in the image.")


def _q_ocr(scene: Scene, rng: random.Random) -> Optional[Question]:
    if scene.label is None:
        return None
    text = scene.label.text
    pool = LETTERS if len(text) == 1 else tuple(w for w in WORDS if len(w) == len(text))
    what = "letter" if len(text) == 1 else "word"
    return Question("ocr", f"What {what} is written in the image?", text,
                    f"The {what} {text} is written in the image.", tuple(t for t in pool if t != text),
                    "ocr", "The text is written in black capital letters.")


def _q_roll(scene: Scene, rng: random.Random) -> Optional[Question]:
    shapes = _unique_by(scene, "colour")
    if not shapes:
        return None
    circles = [s for s in shapes if s.kind == "circle"]
    # Circles are one kind in five; prefer them so that "yes" is not a rare answer.
    s = rng.choice(circles) if circles and rng.random() < 0.5 else rng.choice(shapes)
    yes = s.kind == "circle"
    sentence = (f"Yes, the {s.colour} shape is a circle, so it could roll." if yes else
                f"No, the {s.colour} shape is {article(s.kind)}; it has corners, so it could not roll.")
    return Question("roll", f"Could the {s.colour} shape roll like a wheel?", "yes" if yes else "no",
                    sentence, ("no",) if yes else ("yes",), "physical_property_reasoning",
                    "Think about whether the shape has corners.")


def _distance(a: Shape, b: Shape) -> float:
    return math.dist(a.centroid, b.centroid)


def _cell_distance(scene: Scene, a: Shape, b: Shape) -> float:
    ra, rb = cell_rect(scene.width, scene.height, a.position), cell_rect(scene.width, scene.height, b.position)
    return math.dist(((ra[0] + ra[2]) / 2, (ra[1] + ra[3]) / 2), ((rb[0] + rb[2]) / 2, (rb[1] + rb[3]) / 2))


def _q_nearest(scene: Scene, rng: random.Random) -> Optional[Question]:
    if len(scene.shapes) < 3:
        return None
    targets = list(scene.shapes)
    rng.shuffle(targets)
    for a in targets:
        others = sorted((s for s in scene.shapes if s is not a), key=lambda s: _distance(a, s))
        # A clear winner only: the nearest must be at most 0.8x as far as the runner-up, both measured
        # between the shapes' pixels and between their cells, so that the answer follows from which
        # cells the shapes are in (what a coarse view perceives) and not from a few pixels of jitter.
        by_cell = sorted(others, key=lambda s: _cell_distance(scene, a, s))
        if (_distance(a, others[0]) <= 0.8 * _distance(a, others[1]) and by_cell[0] is others[0]
                and _cell_distance(scene, a, by_cell[0]) <= 0.8 * _cell_distance(scene, a, by_cell[1])):
            return Question("nearest", f"Which shape is closest to the {a.name}?", others[0].name,
                            f"The {others[0].name} is closest to the {a.name}.",
                            tuple(s.name for s in others[1:]), "physical_relation",
                            "Compare the distances between the shapes.")
    return None


def _q_removal(scene: Scene, rng: random.Random) -> Optional[Question]:
    n = len(scene.shapes)
    if n < 2:
        return None
    s = rng.choice(scene.shapes)
    return Question("removal", f"If the {s.name} were removed, how many shapes would be left?", str(n - 1),
                    f"{NUMBER_WORDS[n - 1].capitalize()} shape{'' if n == 2 else 's'} would be left.",
                    tuple(str(k) for k in range(6) if k != n - 1), "future_prediction",
                    "Only shapes count, not text.")


def _q_topic(scene: Scene, rng: random.Random) -> Optional[Question]:
    if len(scene.shapes) > 3:
        return None
    shapes = reading_order(scene)
    truth = sorted(s.name for s in shapes)
    phrase = lambda names: join_words([article(n) for n in names])  # noqa: E731
    wrong = set()
    for i, s in enumerate(shapes):
        for colour, kind in [(c, s.kind) for c in COLOURS] + [(s.colour, k) for k in KINDS]:
            names = [f"{colour} {kind}" if j == i else t.name for j, t in enumerate(shapes)]
            if sorted(names) != truth:
                wrong.add(phrase(names))
    distractors = sorted(wrong)
    rng.shuffle(distractors)
    return Question("topic", "Which description best matches the image?", phrase([s.name for s in shapes]),
                    f"The image shows {phrase([s.name for s in shapes])}.", tuple(distractors[:6]),
                    "image_topic", "Look at the colour and the kind of every shape.")


QUESTION_MAKERS = {
    "colour": _q_colour, "shape": _q_shape, "size": _q_size, "position": _q_position,
    "count": _q_count, "count_colour": _q_count_colour, "count_kind": _q_count_kind,
    "exists": _q_exists, "bigger": _q_bigger, "left_above": _q_left_above, "relative": _q_relative,
    "ocr": _q_ocr, "roll": _q_roll, "nearest": _q_nearest, "removal": _q_removal, "topic": _q_topic,
}


def image_questions(scene: Scene, rng: random.Random) -> List[Question]:
    """One question of every type that applies to ``scene`` (in QUESTION_MAKERS order)."""
    out = []
    for make in QUESTION_MAKERS.values():
        q = make(scene, rng)
        if q is not None:
            out.append(q)
    return out


def pair_questions(a: Scene, b: Scene, rng: random.Random) -> List[Question]:
    """Questions about two images shown together (first, then second)."""
    na, nb = len(a.shapes), len(b.shapes)
    out = [Question("pair_total", "How many shapes are there in total in the two images?", str(na + nb),
                    f"There are {NUMBER_WORDS[na]} shape{'s' * (na != 1)} in the first image and "
                    f"{NUMBER_WORDS[nb]} in the second, {NUMBER_WORDS[na + nb]} in total.")]
    if na != nb:
        more = "first" if na > nb else "second"
        out.append(Question("pair_more", "Which image has more shapes, the first or the second?", more,
                            f"The {more} image has more shapes."))
    common = sorted({s.colour for s in a.shapes} & {s.colour for s in b.shapes})
    if len(common) == 1:
        out.append(Question("pair_colour", "Which colour appears in both images?", common[0],
                            f"{common[0].capitalize()} appears in both images."))
    return out


def text_only_questions(rng: random.Random) -> List[Question]:
    kind = rng.choice(KINDS)
    word = rng.choice(list(COLOURS) + list(KINDS))
    is_colour = word in COLOURS
    n = CORNERS_OF[kind]
    return [
        Question("corners", f"How many corners does {article(kind)} have?", str(n),
                 f"{article(kind).capitalize()} has {NUMBER_WORDS[n]} corner{'' if n == 1 else 's'}."),
        Question("word_kind", f"Is {word} a colour or a shape?", "colour" if is_colour else "shape",
                 f"{word.capitalize()} is a {'colour' if is_colour else 'shape'}."),
    ]
