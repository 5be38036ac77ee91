"""What is said about a Shapes-world scene: captions, descriptions, questions and multiple-choice rows.

    rng = scene_rng(seed, "train", i, "tasks")
    caption(scene, rng)                 # "a red circle and a blue square."
    describe(scene)                     # "The image shows two shapes on a light background: ..."
    qs = image_questions(scene, rng)    # one Question per applicable type, targets drawn at random
    row = mc_row(qs[0], rng)            # {"question", "hint", "A".."D", "answer", "category", "l2-category"}
    conversation(scene, rng)            # 2-3 (human, assistant) turns for stage 3
    pair_questions(scene_a, scene_b, rng), text_only_questions(rng), mmmu_item(scenes, rng)

Every question is unambiguous by construction: a shape is named "the red circle" (colour-kind pairs are
unique in a scene), "the circle" only when it is the only circle; left/right/above/below are asked only
where the two shapes' pixel extents do not overlap along that axis, "which is bigger" only between size
classes with 1.5x the pixels, "closest" only with a clear winner. Short answers use the closed vocabulary
(colour, kind, size and position words, digits, yes/no, the label text); ``sentence`` is the same fact as
a sentence for the multi-turn instruction data. Multiple-choice questions carry an official MMBench
category; their options are the answer plus distractors, sampled into A-D by :func:`mc_row`.
"""
from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from data_pipelines.mmbench.extract import extract_choice
from data_pipelines.mmbench.prompt import build_mmbench_prompt
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


def mc_row(q: Question, rng: random.Random, hint_probability: float = 0.25) -> Dict[str, str]:
    """An MMBench row (question, hint, A-D, answer, category, l2-category) with 2-4 shuffled options.
    Letters past the number of options are empty strings, as in the official TSVs."""
    if not q.is_mc:
        raise ValueError(f"tasks.mc_row: question type {q.type!r} has no multiple-choice form")
    k = rng.randint(2, min(4, 1 + len(q.distractors)))
    options = [q.answer] + rng.sample(list(q.distractors), k - 1)
    rng.shuffle(options)
    row = {"question": q.question, "hint": q.hint if q.hint and rng.random() < hint_probability else ""}
    for i, letter in enumerate(LETTERS_ABCD):
        row[letter] = options[i] if i < k else ""
    row["answer"] = LETTERS_ABCD[options.index(q.answer)]
    row["category"], row["l2-category"] = q.category, L2_OF[q.category]
    return row


DESCRIBE_PROMPTS = ("Describe the image.", "What do you see in this image?",
                    "Describe the shapes in the picture.", "Tell me about this image.")
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."


def conversation(scene: Scene, rng: random.Random) -> List[Tuple[str, str]]:
    """2-3 (human, assistant) turns about one image, without the <image> token.

    Turns mix a full description, questions answered with a sentence, questions with LLaVA's
    single-word suffix answered briefly, and MMBench-format multiple choice answered with the option's text;
    the suffix is what tells the model which answer length is wanted.
    """
    n_turns = rng.choice((2, 3))
    turns: List[Tuple[str, str]] = []
    if rng.random() < 0.5:
        turns.append((rng.choice(DESCRIBE_PROMPTS), describe(scene)))
    questions = image_questions(scene, rng)
    rng.shuffle(questions)
    for q in questions[: n_turns - len(turns)]:
        style = rng.random()
        if q.is_mc and style < 0.2:  # answered with the option's text, as in dialog()
            row = mc_row(q, rng)
            turns.append((build_mmbench_prompt(row), mc_text_answer(row)))
        elif style < 0.7:
            turns.append((q.question, q.sentence))
        else:
            turns.append((f"{q.question}\n{SHORT_ANSWER_SUFFIX}", q.answer))
    return turns



def mc_text_answer(row: Dict[str, str]) -> str:
    """The right option's text, or its letter where the harness would read that text as another letter
    (an OCR label "B" offered as option C)."""
    text = row[row["answer"]]
    options = {c: row[c] for c in LETTERS_ABCD if row.get(c)}
    return text if extract_choice(text, options) == row["answer"] else row["answer"]


def dialog(scene: Scene, rng: random.Random, mc_probability: float = 0.7) -> List[Tuple[str, str]]:
    """Every applicable question about one image as one multi-turn dialog (stage-2 "dense" data).

    One image's tokens then carry a dozen supervised answers instead of one, which is what lets a small
    model learn to ground words in image features within minutes on a CPU. Questions with a
    multiple-choice form are asked in the MMBench prompt format with probability ``mc_probability`` and
    answered with the option's *text*: the MMBench harness reads such answers back to a letter with
    VLMEvalKit's exact matching (``data_pipelines.mmbench.extract.can_infer_text``), and a tiny model learns
    "say what is true" long before it learns to point at a letter.
    """
    questions = image_questions(scene, rng)
    rng.shuffle(questions)
    turns: List[Tuple[str, str]] = []
    for q in questions:
        if q.is_mc and rng.random() < mc_probability:
            row = mc_row(q, rng)
            turns.append((build_mmbench_prompt(row), mc_text_answer(row)))
        else:
            turns.append((q.question, q.answer))
    return turns

# ---- two images, no image --------------------------------------------------------------------------
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


# ---- MMMU-style items over 1-3 images ----------------------------------------------------------------
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
