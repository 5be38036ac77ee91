"""The Shapes world's questions as training turns: MMBench-format multiple-choice rows, stage-3 conversations
and dense per-image dialogs.

    row = mc_row(question, rng)          # {"question", "hint", "A".."D", "answer", "category", "l2-category"}
    conversation(scene, rng)             # 2-3 (human, assistant) turns for stage 3
    dialog(scene, rng)                   # every question about the image in one multi-turn record
"""
from __future__ import annotations

import random
from typing import Dict, List, Tuple

from data_pipelines.mmbench.extract import extract_choice
from data_pipelines.mmbench.prompt import build_mmbench_prompt
from data_pipelines.shapes.scene import Scene
from data_pipelines.shapes.tasks import L2_OF, LETTERS_ABCD, Question, describe, image_questions

def mc_row(q: Question, rng: random.Random, hint_probability: float = 0.25) -> Dict[str, str]:
    """An MMBench row (question, hint, A-D, answer, category, l2-category) with 2-4 shuffled options.
    Letters past the number of options are empty strings, as in the official TSVs."""
    if not q.is_mc:
        raise ValueError(f"mc_row: question type {q.type!r} has no multiple-choice form")
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
