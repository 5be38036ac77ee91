"""The Shapes world: a generated dataset the default tiny model trains on and is evaluated on.

    mllm data make-shapes --out data/shapes [--seed 0 --train 2000 --test 200] [--overwrite]

    from data_pipelines.shapes import make_shapes
    manifest = make_shapes("data/shapes", seed=0, n_train=2000, n_test=200)

Images of 1-4 flat-coloured shapes (5 kinds, 6 colours, 2 sizes, 5 positions) on a light background,
96-400 px long side with aspect ratios from 1:3 to 3:1 (shapes and labels sized in patches of the tiny model's
AnyRes canvas, see scene.py), some with a short text label. Written into ``out_dir``:

    images/{train,test}/*.png           scenes_{train,test}.jsonl (what is in each image, with pixel boxes)
    captions_train.json                 stage 1: LLaVA JSON, "<image>" -> short caption
    vqa_train.json                      stage 2: open VQA, MMBench-format multiple choice (answer = letter),
                                        a few two-image and text-only records
    vqa_dialog_train.json               stage 2, dense: every question about an image in one multi-turn
                                        record; multiple choice answered with the option's text (the demo's)
    instruct_train.json                 stage 3: 2-3 turn conversations
    mmbench_dev.tsv, mmbench_test.tsv   VLMEvalKit MMBench layout with circular variants (test images)
    mmmu_validation.parquet, mmmu_test.parquet   HF MMMU schema, 1-3 images per question (test images)
    manifest.json                       files, counts, seed and vocabulary
    gen_train.json, gen_test.json       the image head's prompt/picture pairs (``shapes/gen.py``), same sizes

The same seed gives the same bytes. Train and test scenes are drawn from separate random streams and
any test scene identical to a train scene is redrawn, so no image or scene is shared; every evaluation
file is built from test images only. Generation of the defaults takes a few seconds.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Set

from tqdm import tqdm

from data_pipelines.shapes.render import render_scene, save_png
from data_pipelines.shapes.scene import COLOURS, KINDS, REGIONS, SIZES, Scene, sample_scene, scene_key, scene_rng
from data_pipelines.shapes.mmmu_items import mmmu_item
from data_pipelines.shapes.tasks import caption, image_questions, pair_questions, text_only_questions
from data_pipelines.shapes.turns import conversation, dialog, mc_row
from data_pipelines.shapes import writers
from data_pipelines.mmbench.prompt import build_mmbench_prompt
from data_pipelines.shapes.gen import make_gen_data

__all__ = ["make_shapes", "DEFAULT_TRAIN", "DEFAULT_TEST", "OUTPUTS"]

DEFAULT_TRAIN, DEFAULT_TEST = 2000, 200
OUTPUTS = ("images/train", "images/test", "scenes_train.jsonl", "scenes_test.jsonl", "captions_train.json",
           "vqa_train.json", "vqa_dialog_train.json", "instruct_train.json", "mmbench_dev.tsv", "mmbench_test.tsv",
           "mmmu_validation.parquet", "mmmu_test.parquet", "manifest.json")
OPEN_PER_IMAGE = 3          # open VQA records per train image (plus one multiple-choice record)
PAIR_EVERY, TEXT_EVERY = 20, 50   # one two-image record per 20 train images, one text-only per 50
PROGRESS_FROM = 500         # show progress bars from this many images per split


def _prepare(out_dir: str, overwrite: bool) -> None:
    os.makedirs(out_dir, exist_ok=True)
    existing = [name for name in OUTPUTS if os.path.exists(os.path.join(out_dir, name))]
    if existing and not overwrite:
        raise ValueError(f"{out_dir} already holds Shapes output ({', '.join(existing)}); "
                         "pass overwrite=True (--overwrite) to replace it")
    for name in existing:  # only what this generator writes; anything else in out_dir is left alone
        path = os.path.join(out_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for split in ("train", "test"):
        os.makedirs(os.path.join(out_dir, "images", split))


def _make_split(out_dir: str, seed: int, split: str, n: int, taken: Set[str], progress: bool) -> List[Scene]:
    scenes = []
    for i in tqdm(range(n), desc=f"shapes {split}", unit="img", disable=not progress):
        scene_id = f"{split}_{i:06d}"
        image = f"images/{split}/{scene_id}.png"
        attempt = 0
        while True:  # a repeat of an earlier scene (in either split) is redrawn from the next stream
            rng = scene_rng(seed, split, i, "scene" if attempt == 0 else f"scene-retry{attempt}")
            scene = sample_scene(rng, scene_id, split, image)
            key = scene_key(scene)
            if key not in taken:
                break
            attempt += 1
        taken.add(key)
        save_png(render_scene(scene), os.path.join(out_dir, image))
        scenes.append(scene)
    return scenes


def _turns(human_first: str, turns: Sequence[Sequence[str]]) -> List[Dict[str, str]]:
    """LLaVA conversations; ``human_first`` (image tokens) is prefixed to the first human turn."""
    out = []
    for j, (human, gpt) in enumerate(turns):
        out.append({"from": "human", "value": (human_first + human) if j == 0 else human})
        out.append({"from": "gpt", "value": gpt})
    return out


def _caption_records(scenes: Sequence[Scene], seed: int) -> List[Dict[str, Any]]:
    return [{"id": f"{s.id}_caption", "image": s.image,
             "conversations": [{"from": "human", "value": "<image>"},
                               {"from": "gpt", "value": caption(s, scene_rng(seed, s.split, i, "caption"))}]}
            for i, s in enumerate(scenes)]


def _vqa_records(scenes: Sequence[Scene], seed: int) -> List[Dict[str, Any]]:
    records = []
    for i, s in enumerate(scenes):
        rng = scene_rng(seed, s.split, i, "vqa")
        questions = image_questions(s, rng)
        for j, q in enumerate(rng.sample(questions, min(OPEN_PER_IMAGE, len(questions)))):
            records.append({"id": f"{s.id}_vqa{j}", "image": s.image,
                            "conversations": _turns("<image>\n", [(q.question, q.answer)])})
        mc = [q for q in questions if q.is_mc]
        if mc:
            row = mc_row(rng.choice(mc), rng)
            records.append({"id": f"{s.id}_mc", "image": s.image,
                            "conversations": _turns("<image>\n", [(build_mmbench_prompt(row), row["answer"])])})
    n = len(scenes)
    for j in range(max(1, n // PAIR_EVERY)):
        a, b = scenes[(2 * j) % n], scenes[(2 * j + 1) % n]
        rng = scene_rng(seed, "train", j, "pair")
        q = rng.choice(pair_questions(a, b, rng))
        records.append({"id": f"pair_{j:06d}", "image": [a.image, b.image],
                        "conversations": _turns("<image>\n<image>\n", [(q.question, q.answer)])})
    for j in range(max(1, n // TEXT_EVERY)):
        rng = scene_rng(seed, "train", j, "text")
        q = rng.choice(text_only_questions(rng))
        records.append({"id": f"text_{j:06d}", "conversations": _turns("", [(q.question, q.answer)])})
    return records


def _dialog_records(scenes: Sequence[Scene], seed: int) -> List[Dict[str, Any]]:
    return [{"id": f"{s.id}_dialog", "image": s.image,
             "conversations": _turns("<image>\n", dialog(s, scene_rng(seed, s.split, i, "dialog")))}
            for i, s in enumerate(scenes)]


def _instruct_records(scenes: Sequence[Scene], seed: int) -> List[Dict[str, Any]]:
    return [{"id": f"{s.id}_chat", "image": s.image,
             "conversations": _turns("<image>\n", conversation(s, scene_rng(seed, s.split, i, "instruct")))}
            for i, s in enumerate(scenes)]


def _mmbench_rows(scenes: Sequence[Scene], seed: int, out_dir: str, split: str, first_index: int) -> List[Dict]:
    used: Counter = Counter()
    rows = []
    for i, s in enumerate(scenes):
        rng = scene_rng(seed, s.split, i, f"mmbench-{split}")
        candidates = [q for q in image_questions(s, rng) if q.is_mc]
        # The least-used category first keeps the categories balanced for per-category scores.
        fewest = min(used[q.category] for q in candidates)
        q = rng.choice([q for q in candidates if used[q.category] == fewest])
        used[q.category] += 1
        row = mc_row(q, rng)
        row.update(index=first_index + i, split=split, image=writers.png_base64(os.path.join(out_dir, s.image)))
        rows.append(row)
    return rows


def _mmmu_rows(scenes: Sequence[Scene], seed: int, out_dir: str, split: str, n_items: int) -> List[Dict]:
    per_subject: Counter = Counter()
    rows = []
    for j in range(n_items):
        rng = scene_rng(seed, "test", j, f"mmmu-{split}")
        item = mmmu_item(rng.sample(list(scenes), min(3, len(scenes))), rng)
        if item is None:
            continue
        per_subject[item.subject] += 1
        row: Dict[str, Any] = {
            "id": f"{split}_{item.subject}_{per_subject[item.subject]}", "question": item.question,
            "options": str(list(item.options)),
            "explanation": item.explanation if split == "validation" else "",
            "img_type": str(["Geometric Shapes"]),
            "answer": item.answer if split == "validation" else "?",  # MMMU hides test answers as "?"
            "topic_difficulty": item.difficulty, "question_type": item.question_type,
            "subfield": item.subfield,
        }
        for k, s in enumerate(item.scenes, start=1):
            row[f"image_{k}"] = writers.image_struct(os.path.join(out_dir, s.image))
        rows.append(row)
    return rows


def make_shapes(out_dir: str, seed: int = 0, n_train: int = DEFAULT_TRAIN, n_test: int = DEFAULT_TEST,
                overwrite: bool = False, progress: Optional[bool] = None) -> Dict[str, Any]:
    """Generate the Shapes world into ``out_dir`` and return the manifest (also in manifest.json)."""
    for name, value, least in (("n_train", n_train, 2), ("n_test", n_test, 2)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"make_shapes: {name} must be an integer >= {least}, got {value!r}")
    out_dir = os.fspath(out_dir)
    _prepare(out_dir, overwrite)
    taken: Set[str] = set()
    train = _make_split(out_dir, seed, "train", n_train, taken,
                        n_train >= PROGRESS_FROM if progress is None else progress)
    test = _make_split(out_dir, seed, "test", n_test, taken,
                       n_test >= PROGRESS_FROM if progress is None else progress)
    path = lambda name: os.path.join(out_dir, name)  # noqa: E731

    writers.write_jsonl(path("scenes_train.jsonl"), (s.to_dict() for s in train))
    writers.write_jsonl(path("scenes_test.jsonl"), (s.to_dict() for s in test))
    captions, vqa, instruct = _caption_records(train, seed), _vqa_records(train, seed), _instruct_records(train, seed)
    writers.write_llava_json(path("captions_train.json"), captions)
    writers.write_llava_json(path("vqa_train.json"), vqa)
    dialogs = _dialog_records(train, seed)
    writers.write_llava_json(path("vqa_dialog_train.json"), dialogs)
    writers.write_llava_json(path("instruct_train.json"), instruct)

    dev_rows = _mmbench_rows(test, seed, out_dir, "dev", 0)
    test_rows = _mmbench_rows(test, seed, out_dir, "test", len(dev_rows))
    n_dev_tsv = writers.write_mmbench_tsv(path("mmbench_dev.tsv"), dev_rows, with_answer=True)
    n_test_tsv = writers.write_mmbench_tsv(path("mmbench_test.tsv"), test_rows, with_answer=False)
    n_mmmu = max(4, n_test // 2)
    val_rows = _mmmu_rows(test, seed, out_dir, "validation", n_mmmu)
    mmmu_test_rows = _mmmu_rows(test, seed, out_dir, "test", n_mmmu)
    writers.write_mmmu_parquet(path("mmmu_validation.parquet"), val_rows)
    writers.write_mmmu_parquet(path("mmmu_test.parquet"), mmmu_test_rows)

    kinds = Counter("two_image" if isinstance(r.get("image"), list) else "text_only" if "image" not in r
                    else "multiple_choice" if r["id"].endswith("_mc") else "open" for r in vqa)
    manifest = {
        "name": "shapes", "generator": "data_pipelines.shapes.make_shapes", "format_version": 1,
        "seed": seed, "n_train": n_train, "n_test": n_test,
        "files": {
            "images/train": {"images": len(train)}, "images/test": {"images": len(test)},
            "scenes_train.jsonl": {"records": len(train)}, "scenes_test.jsonl": {"records": len(test)},
            "captions_train.json": {"records": len(captions), "stage": 1},
            "vqa_train.json": {"records": len(vqa), "stage": 2, **dict(sorted(kinds.items()))},
            "vqa_dialog_train.json": {"records": len(dialogs), "stage": 2,
                                      "turns": sum(len(r["conversations"]) // 2 for r in dialogs)},
            "instruct_train.json": {"records": len(instruct), "stage": 3},
            "mmbench_dev.tsv": {"questions": len(dev_rows), "rows": n_dev_tsv,
                                "categories": dict(sorted(Counter(r["category"] for r in dev_rows).items()))},
            "mmbench_test.tsv": {"questions": len(test_rows), "rows": n_test_tsv},
            "mmmu_validation.parquet": {"records": len(val_rows), "subjects": dict(sorted(
                Counter(r["id"].split("_", 1)[1].rsplit("_", 1)[0] for r in val_rows).items()))},
            "mmmu_test.parquet": {"records": len(mmmu_test_rows)},
            "manifest.json": {},
        },
        "vocabulary": {"colours": list(COLOURS), "kinds": list(KINDS), "sizes": list(SIZES),
                       "positions": list(REGIONS)},
    }
    # the image-generation head's prompt/picture pairs (gen_{train,test}.json, images/gen_*; see shapes/gen.py)
    manifest["gen"] = make_gen_data(out_dir, seed=seed, n_train=n_train, n_test=n_test, overwrite=overwrite)
    with open(path("manifest.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    return manifest
