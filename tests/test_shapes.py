"""The Shapes world generator: determinism, train/test disjointness, file formats (LLaVA JSON, MMBench TSV,
MMMU parquet), the CLI, and that metadata, pixels and answers agree."""
from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import re
import string
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipelines.shapes import make_shapes
from data_pipelines.shapes.render import text_mask
from data_pipelines.shapes.scene import (BACKGROUND, COLOURS, KINDS, PATCH, PLURALS, REGIONS, TEXT_COLOUR, Scene,
                                         canvas_scale, cell_rect, label_places_of, layout_of, positions_of,
                                         sample_scene, scene_rng)
from data_pipelines.shapes.writers import circular_variants
from data_pipelines.mmbench.prompt import build_mmbench_prompt
from mllm.app.cli import main as cli_main

SEED, N_TRAIN, N_TEST = 5, 40, 16
MMBENCH_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category",
                   "split", "image"]
# The official MMBench l2-category of every category the Shapes world uses.
OFFICIAL_L2 = {
    "image_style": "coarse_perception", "image_scene": "coarse_perception", "image_emotion": "coarse_perception",
    "image_quality": "coarse_perception", "image_topic": "coarse_perception",
    "object_localization": "finegrained_perception (instance-level)",
    "attribute_recognition": "finegrained_perception (instance-level)",
    "celebrity_recognition": "finegrained_perception (instance-level)",
    "ocr": "finegrained_perception (instance-level)",
    "spatial_relationship": "finegrained_perception (cross-instance)",
    "attribute_comparison": "finegrained_perception (cross-instance)",
    "action_recognition": "finegrained_perception (cross-instance)",
    "physical_property_reasoning": "attribute_reasoning", "function_reasoning": "attribute_reasoning",
    "identity_reasoning": "attribute_reasoning",
    "social_relation": "relation_reasoning", "physical_relation": "relation_reasoning",
    "nature_relation": "relation_reasoning",
    "structuralized_imagetext_understanding": "logic_reasoning", "future_prediction": "logic_reasoning",
}
MMMU_COLUMNS = (["id", "question", "options", "explanation"] + [f"image_{i}" for i in range(1, 8)]
                + ["img_type", "answer", "topic_difficulty", "question_type", "subfield"])
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "a"
    manifest = make_shapes(out, seed=SEED, n_train=N_TRAIN, n_test=N_TEST)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    return out


def _files(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _scenes(root: Path, split: str):
    return [Scene.from_dict(json.loads(line)) for line in (root / f"scenes_{split}.jsonl").read_text().splitlines()]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _llava(root: Path, name: str):
    return json.loads((root / name).read_text())


# ---- determinism, CLI, disjointness ---------------------------------------------------------------
def test_cli_reproduces_the_python_api_byte_for_byte(data, tmp_path, capsys):
    out = tmp_path / "b"
    rc = cli_main(["data", "make-shapes", "--out", str(out), "--seed", str(SEED), "--train", str(N_TRAIN),
                   "--test", str(N_TEST)])
    assert rc == 0
    assert "written to" in capsys.readouterr().out
    a, b = _files(data), _files(out)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    manifest = json.loads(a["manifest.json"])
    assert manifest["seed"] == SEED and manifest["n_train"] == N_TRAIN and manifest["n_test"] == N_TEST
    for name in manifest["files"]:
        assert (data / name).exists(), name
    assert len(list((data / "images/train").glob("*.png"))) == manifest["files"]["images/train"]["images"]


def test_another_seed_gives_other_scenes(data, tmp_path):
    make_shapes(tmp_path / "c", seed=SEED + 1, n_train=4, n_test=3)
    assert (tmp_path / "c/scenes_train.jsonl").read_text().splitlines()[0] != \
        (data / "scenes_train.jsonl").read_text().splitlines()[0]


def test_train_and_test_share_no_image_or_scene(data):
    train, test = _scenes(data, "train"), _scenes(data, "test")
    assert len(train) == N_TRAIN and len(test) == N_TEST
    strip = lambda s: {k: v for k, v in s.to_dict().items() if k not in ("id", "split", "image")}  # noqa: E731
    assert not {json.dumps(strip(s)) for s in train} & {json.dumps(strip(s)) for s in test}
    train_png = {_sha((data / s.image).read_bytes()) for s in train}
    test_png = {_sha((data / s.image).read_bytes()) for s in test}
    assert not train_png & test_png
    assert all(s.image.startswith("images/train/") for s in train)
    assert all(s.image.startswith("images/test/") for s in test)
    # training files only use train images ...
    for name in ("captions_train.json", "vqa_train.json", "instruct_train.json"):
        for rec in _llava(data, name):
            images = rec.get("image", [])
            for path in [images] if isinstance(images, str) else images:
                assert path.startswith("images/train/"), (name, rec["id"])
    # ... and every evaluation image is a test image
    for name in ("mmbench_dev.tsv", "mmbench_test.tsv"):
        df = pd.read_csv(data / name, sep="\t", keep_default_na=False)
        base = df[df["index"] < 1_000_000]
        assert {_sha(base64.b64decode(x)) for x in base["image"]} <= test_png
    for name in ("mmmu_validation.parquet", "mmmu_test.parquet"):
        table = pq.read_table(data / name).to_pylist()
        shas = {_sha(row[f"image_{i}"]["bytes"]) for row in table for i in range(1, 8) if row[f"image_{i}"]}
        assert shas and shas <= test_png


def test_refuses_to_overwrite_and_cleans_up_when_asked(tmp_path, capsys):
    out = tmp_path / "d"
    make_shapes(out, seed=0, n_train=6, n_test=3)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds Shapes output.*--overwrite"):
        make_shapes(out, seed=0, n_train=4, n_test=3)
    assert cli_main(["data", "make-shapes", "--out", str(out), "--train", "4", "--test", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["data", "make-shapes", "--out", str(out), "--train", "4", "--test", "3",
                     "--overwrite"]) == 0
    assert len(list((out / "images/train").glob("*.png"))) == 4  # no stale images from the first run
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="n_train must be an integer >= 2"):
        make_shapes(tmp_path / "e", n_train=0)


# ---- scenes and pixels -----------------------------------------------------------------------------
def test_scene_metadata_agrees_with_pixels(data):
    palette = {tuple(BACKGROUND), tuple(TEXT_COLOUR)} | set(COLOURS.values())
    for scene in _scenes(data, "train") + _scenes(data, "test"):
        with Image.open(data / scene.image) as im:
            assert im.mode == "RGB" and im.size == (scene.width, scene.height)
            px = np.asarray(im).astype(np.int32)  # (H, W, 3)
        assert {tuple(c) for c in px.reshape(-1, 3)} <= palette, scene.id  # flat colours, no blending
        covered = np.zeros(px.shape[:2], dtype=bool)
        for s in scene.shapes:
            x, y = s.centroid
            assert tuple(px[y, x]) == COLOURS[s.colour], (scene.id, s.name)
            x0, y0, x1, y1 = s.bbox
            inside = np.all(px[y0:y1, x0:x1] == COLOURS[s.colour], axis=-1)  # (h, w)
            assert inside.sum() == s.area and inside.any(0).all() and inside.any(1).all(), (scene.id, s.name)
            assert not covered[y0:y1, x0:x1].any(), f"{scene.id}: shapes overlap"
            covered[y0:y1, x0:x1] = True
            # the whole shape lies in the named cell of the image's layout (3x3 grid or a line of three)
            assert s.position in positions_of(scene.width, scene.height), (scene.id, s.name)
            cx0, cy0, cx1, cy1 = cell_rect(scene.width, scene.height, s.position)
            assert cx0 <= x0 and x1 <= cx1 and cy0 <= y0 and y1 <= cy1, (scene.id, s.name)
        if scene.label is not None:
            x0, y0, x1, y1 = scene.label.box
            ink = np.asarray(text_mask(scene.label.text, scene.label.scale)) > 0  # (h, w)
            region = px[y0:y1, x0:x1]
            assert np.all(region[ink] == TEXT_COLOUR) and np.all(region[~ink] == BACKGROUND), scene.id
            assert not covered[y0:y1, x0:x1].any(), f"{scene.id}: label overlaps a shape"
            assert scene.label.corner in label_places_of(scene.width, scene.height)
            cx0, cy0, cx1, cy1 = cell_rect(scene.width, scene.height, scene.label.corner)
            assert cx0 <= x0 and x1 <= cx1 and cy0 <= y0 and y1 <= cy1, scene.id
            assert scene.label.corner not in {s.position for s in scene.shapes}, scene.id
            covered[y0:y1, x0:x1] = True
        assert np.all(px[~covered] == BACKGROUND), scene.id


def test_scene_sampler_covers_the_vocabulary_and_sizes():
    scenes = [sample_scene(scene_rng(0, "probe", i), f"p{i}", "probe", "p.png") for i in range(400)]
    assert {s.kind for sc in scenes for s in sc.shapes} == set(KINDS)
    assert {s.colour for sc in scenes for s in sc.shapes} == set(COLOURS)
    assert {s.position for sc in scenes for s in sc.shapes} == set(REGIONS)
    assert {len(sc.shapes) for sc in scenes} == {1, 2, 3, 4}
    assert 0.2 < sum(sc.label is not None for sc in scenes) / len(scenes) < 0.5
    sides = [v for sc in scenes for v in (sc.width, sc.height)]
    assert min(sides) >= 32 and max(sides) > 350 and max(sides) <= 400
    aspects = [sc.width / sc.height for sc in scenes]
    assert min(aspects) < 0.4 and max(aspects) > 2.5 and all(1 / 3.1 < a < 3.1 for a in aspects)
    layouts = Counter(layout_of(sc.width, sc.height) for sc in scenes)
    assert layouts["grid"] > 100 and layouts["line"] > 100
    assert {len(sc.shapes) for sc in scenes if layout_of(sc.width, sc.height) == "grid"} == {1, 2, 3, 4}
    for sc in scenes:
        assert len({s.name for s in sc.shapes}) == len(sc.shapes)  # "the red circle" names one shape


def test_sizes_are_set_in_patches_of_the_canvas_the_model_sees():
    """Whatever the image size, a shape is SMALL/LARGE_PATCHES patches on the AnyRes canvas of the tiny
    preset, and a label's glyphs are 3-4.5 patches tall there (the processor's own resize decides)."""
    from mllm import anyres
    from mllm.presets import TINY_PINPOINTS

    scenes = [sample_scene(scene_rng(1, "probe", i), f"p{i}", "probe", "p.png") for i in range(400)]
    for sc in scenes:
        k = canvas_scale(sc.width, sc.height)
        bh, bw = anyres.select_best_resolution((sc.height, sc.width), TINY_PINPOINTS)
        nh, nw = anyres.fit_size((sc.height, sc.width), (bh, bw))
        assert abs(k * sc.width - nw) <= 1 and abs(k * sc.height - nh) <= 1
        for s in sc.shapes:
            patches = (s.box[2] - s.box[0]) * k / PATCH
            assert (2.5 <= patches <= 3.5) if s.size == "large" else (1.75 <= patches <= 2.25), (sc.id, s)
        if sc.label is not None:
            glyph_patches = sc.label.scale * 6 * k / PATCH
            assert 2.2 <= glyph_patches <= 4.5, (sc.id, sc.label)


def test_scene_round_trip_and_errors(data):
    line = json.loads((data / "scenes_test.jsonl").read_text().splitlines()[0])
    assert Scene.from_dict(line).to_dict() == line
    bad = json.loads(json.dumps(line))
    bad["shapes"][0]["colour"] = "pink"
    with pytest.raises(ValueError, match=r"test_000000.*shapes\[0\]\.colour.*pink"):
        Scene.from_dict(bad)
    bad["shapes"][0]["colour"] = line["shapes"][0]["colour"]
    bad["shapes"][0]["position"] = "middle"
    with pytest.raises(ValueError, match=r"shapes\[0\]\.position.*middle"):
        Scene.from_dict(bad)
    bad["shapes"][0]["position"] = line["shapes"][0]["position"]
    del bad["width"]
    with pytest.raises(ValueError, match="missing field 'width'"):
        Scene.from_dict(bad)


# ---- what the questions say must be true -----------------------------------------------------------
def _expected(question: str, scene: Scene):
    """The answer computed independently from the scene metadata (pixel boxes and areas), or None for
    templates this oracle does not know."""
    by_name = {s.name: s for s in scene.shapes}
    n = len(scene.shapes)
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        [s] = [s for s in scene.shapes if s.kind == m[1]]
        return s.colour
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        [s] = [s for s in scene.shapes if s.colour == m[1]]
        return s.kind
    if m := re.fullmatch(r"Is the (\w+ \w+) large or small\?", question):
        return by_name[m[1]].size
    if m := re.fullmatch(r"Where is the (\w+ \w+) in the image\?", question):
        return by_name[m[1]].position
    if question == "How many shapes are there in the image?":
        return str(n)
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
        return str(sum(s.colour == m[1] for s in scene.shapes))
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        return str(sum(PLURALS[s.kind] == m[1] for s in scene.shapes))
    if m := re.fullmatch(r"Is there an? (\w+ \w+) in the image\?", question):
        return "yes" if m[1] in by_name else "no"
    if m := re.fullmatch(r"Which is bigger, the (\w+ \w+) or the (\w+ \w+)\?", question):
        a, b = by_name[m[1]], by_name[m[2]]
        assert max(a.area, b.area) >= 1.5 * min(a.area, b.area)
        return a.name if a.area > b.area else b.name
    if m := re.fullmatch(r"Is the (\w+ \w+) to the left of the (\w+ \w+)\?", question):
        a, b = by_name[m[1]], by_name[m[2]]
        assert a.bbox[2] <= b.bbox[0] or b.bbox[2] <= a.bbox[0]
        return "yes" if a.bbox[2] <= b.bbox[0] else "no"
    if m := re.fullmatch(r"Is the (\w+ \w+) above the (\w+ \w+)\?", question):
        a, b = by_name[m[1]], by_name[m[2]]
        assert a.bbox[3] <= b.bbox[1] or b.bbox[3] <= a.bbox[1]
        return "yes" if a.bbox[3] <= b.bbox[1] else "no"
    if m := re.fullmatch(r"Where is the (\w+ \w+) relative to the (\w+ \w+)\?", question):
        a, b = by_name[m[1]], by_name[m[2]]
        true = {"left": a.bbox[2] <= b.bbox[0], "right": b.bbox[2] <= a.bbox[0],
                "above": a.bbox[3] <= b.bbox[1], "below": b.bbox[3] <= a.bbox[1]}
        [rel] = [k for k, v in true.items() if v]  # exactly one relation holds
        return rel
    if re.fullmatch(r"What (letter|word) is written in the image\?", question):
        return scene.label.text
    if m := re.fullmatch(r"Could the (\w+) shape roll like a wheel\?", question):
        [s] = [s for s in scene.shapes if s.colour == m[1]]
        return "yes" if s.kind == "circle" else "no"
    if m := re.fullmatch(r"Which shape is closest to the (\w+ \w+)\?", question):
        a = by_name[m[1]]
        d = sorted((np.hypot(a.centroid[0] - s.centroid[0], a.centroid[1] - s.centroid[1]), s.name)
                   for s in scene.shapes if s is not a)
        assert d[0][0] <= 0.8 * d[1][0]
        return d[0][1]
    if m := re.fullmatch(r"If the (\w+ \w+) were removed, how many shapes would be left\?", question):
        assert m[1] in by_name
        return str(n - 1)
    if question == "Which description best matches the image?":
        return sorted(s.name for s in scene.shapes)  # compared as a multiset of names
    return None


def _check(question: str, answer: str, scene: Scene) -> bool:
    expected = _expected(question, scene)
    assert expected is not None, f"no oracle for {question!r}"
    if isinstance(expected, list):
        names = sorted(re.sub(r"^an? ", "", p) for p in re.split(r", | and ", answer))
        return names == expected
    return answer == expected


def test_vqa_answers_are_true(data):
    scenes = {s.image: s for s in _scenes(data, "train")}
    checked = Counter()
    for rec in _llava(data, "vqa_train.json"):
        if not isinstance(rec.get("image"), str) or rec["id"].endswith("_mc"):
            continue
        question = rec["conversations"][0]["value"].removeprefix("<image>\n")
        assert _check(question, rec["conversations"][1]["value"], scenes[rec["image"]]), rec
        checked[question.split()[0]] += 1
    assert sum(checked.values()) == 3 * N_TRAIN and len(checked) >= 5


def _parse_mc_prompt(prompt: str):
    m = re.fullmatch(r"(?:Hint: (?P<hint>[^\n]*)\n)?Question: (?P<q>[^\n]*)\nOptions:\n(?P<opts>(?:[A-D]\. [^\n]*\n)+)"
                     r"Please select the correct answer from the options above. \n", prompt)
    assert m, prompt
    row = {"question": m["q"], "hint": m["hint"] or ""}
    row.update(line.split(". ", 1) for line in m["opts"].splitlines())
    return row


def test_multiple_choice_training_records_use_the_mmbench_prompt(data):
    scenes = {s.image: s for s in _scenes(data, "train")}
    records = [r for r in _llava(data, "vqa_train.json") if r["id"].endswith("_mc")]
    assert len(records) == N_TRAIN
    letters, n_options, hints = Counter(), Counter(), 0
    for rec in records:
        human, gpt = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
        assert human.startswith("<image>\n")
        row = _parse_mc_prompt(human.removeprefix("<image>\n"))
        assert human == "<image>\n" + build_mmbench_prompt(row)
        options = [c for c in "ABCD" if c in row]
        assert gpt in options and 2 <= len(options) <= 4
        assert _check(row["question"], row[gpt], scenes[rec["image"]]), rec
        letters[gpt] += 1
        n_options[len(options)] += 1
        hints += bool(row["hint"])
    assert len(letters) >= 3 and set(n_options) >= {2, 3} and 0 < hints < len(records)



def test_dialog_records_ask_everything_and_answer_truthfully(data):
    """vqa_dialog_train.json: one record per train image holding every applicable question; open answers
    are true, multiple-choice turns use the MMBench prompt and answer with the text of the right option
    (which the harness's text matching maps to exactly one letter)."""
    from data_pipelines.mmbench.extract import extract_choice

    scenes = {s.image: s for s in _scenes(data, "train")}
    records = _llava(data, "vqa_dialog_train.json")
    assert len(records) == N_TRAIN
    n_mc = n_open = 0
    for rec in records:
        conv = rec["conversations"]
        assert conv[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in conv[1:])
        assert len(conv) >= 2 * 8  # a dozen questions per image, give or take
        for human, gpt in zip(conv[0::2], conv[1::2]):
            question, answer = human["value"].removeprefix("<image>\n"), gpt["value"]
            if question.startswith(("Question: ", "Hint: ")):
                row = _parse_mc_prompt(question)
                options = {c: row[c] for c in "ABCD" if c in row}
                letter = extract_choice(answer, options)
                assert letter, (rec["id"], answer, options)
                if answer != letter:  # the option's text, unless that text would read as another letter
                    assert options[letter] == answer, (rec["id"], answer, options)
                assert _check(row["question"], options[letter], scenes[rec["image"]]), (rec["id"], question)
                n_mc += 1
            else:
                assert _check(question, answer, scenes[rec["image"]]), (rec["id"], question)
                n_open += 1
    assert n_mc > 0 and n_open > 0

def test_llava_records_images_exist_and_tokens_match(data):
    seen_ids = set()
    kinds = Counter()
    for name in ("captions_train.json", "vqa_train.json", "instruct_train.json"):
        for rec in _llava(data, name):
            assert rec["id"] not in seen_ids
            seen_ids.add(rec["id"])
            images = rec.get("image", [])
            images = [images] if isinstance(images, str) else images
            for path in images:
                with Image.open(data / path) as im:
                    assert im.convert("RGB").mode == "RGB" and im.mode == "RGB"
            conv = rec["conversations"]
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) >= 2
            assert all(t["value"].strip() for t in conv)
            assert sum(t["value"].count("<image>") for t in conv) == len(images), rec["id"]
            assert all("<image>" not in t["value"] for t in conv[1:]), "images only in the first turn"
            kinds[(name, len(images), len(conv) // 2)] += 1
    assert kinds[("captions_train.json", 1, 1)] == N_TRAIN
    assert kinds[("vqa_train.json", 0, 1)] >= 1 and kinds[("vqa_train.json", 2, 1)] >= 1  # text-only, two-image
    assert kinds[("instruct_train.json", 1, 2)] and kinds[("instruct_train.json", 1, 3)]
    for rec in _llava(data, "captions_train.json"):
        assert rec["conversations"][0]["value"] == "<image>"
        assert rec["conversations"][1]["value"].endswith(".")


def test_two_image_answers_are_true(data):
    scenes = {s.image: s for s in _scenes(data, "train")}
    for rec in _llava(data, "vqa_train.json"):
        if isinstance(rec.get("image"), list):
            a, b = (scenes[p] for p in rec["image"])
            q, ans = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
            assert q.startswith("<image>\n<image>\n")
            if "in total" in q:
                assert ans == str(len(a.shapes) + len(b.shapes))
            elif "more shapes" in q:
                assert ans == ("first" if len(a.shapes) > len(b.shapes) else "second")
            else:
                assert {s.colour for s in a.shapes} & {s.colour for s in b.shapes} == {ans}


# ---- MMBench -----------------------------------------------------------------------------------------
def test_mmbench_dev_tsv_layout_and_circular_rows(data):
    df = pd.read_csv(data / "mmbench_dev.tsv", sep="\t", keep_default_na=False)
    assert list(df.columns) == MMBENCH_COLUMNS
    assert df["index"].is_unique and set(df["split"]) == {"dev"}
    test_images = {(data / s.image).read_bytes(): s for s in _scenes(data, "test")}
    rows = {int(r["index"]): r for r in df.to_dict("records")}
    base = {i: r for i, r in rows.items() if i < 1_000_000}
    assert len(base) == N_TEST
    n_variants = 0
    for i, r in base.items():
        options = [r[c] for c in "ABCD" if r[c] != ""]
        n = len(options)
        assert 2 <= n <= 4 and [r[c] for c in "ABCD"[n:]] == [""] * (4 - n)
        assert OFFICIAL_L2[r["category"]] == r["l2-category"]
        scene = test_images[base64.b64decode(r["image"])]
        assert _check(r["question"], r[r["answer"]], scene), r
        with Image.open(io.BytesIO(base64.b64decode(r["image"]))) as im:
            assert im.mode == "RGB"
        for k in range(1, n):
            v = rows.pop(i + k * 1_000_000)
            n_variants += 1
            assert v["image"] == str(i)  # a reference to the base row, not the picture again
            assert [v[c] for c in "ABCD"[:n]] == options[k:] + options[:k]  # ABCD -> BCDA -> ...
            assert v[v["answer"]] == r[r["answer"]]
            assert (v["question"], v["hint"], v["category"]) == (r["question"], r["hint"], r["category"])
        assert i + n * 1_000_000 not in rows
    assert len(df) == len(base) + n_variants
    assert {i for i in rows if i >= 1_000_000} == set()  # no variant without its base
    assert len(set(df["category"])) >= 6 and 0 < (df["hint"] != "").sum() < len(df)


def test_mmbench_test_tsv_has_no_answers(data):
    df = pd.read_csv(data / "mmbench_test.tsv", sep="\t", keep_default_na=False)
    assert list(df.columns) == [c for c in MMBENCH_COLUMNS if c != "answer"]
    assert set(df["split"]) == {"test"}
    base = df[df["index"] < 1_000_000]
    assert len(base) == N_TEST
    assert set(df.loc[df["index"] >= 1_000_000, "image"]) <= {str(i) for i in base["index"]}


def test_circular_variants_rotate_answers():
    row = {"index": 7, "A": "red", "B": "blue", "C": "green", "D": "", "answer": "B", "image": "xx"}
    v1, v2 = circular_variants(row)
    assert (v1["index"], v1["A"], v1["B"], v1["C"], v1["D"], v1["answer"], v1["image"]) == \
        (1_000_007, "blue", "green", "red", "", "A", "7")
    assert (v2["index"], v2["A"], v2["B"], v2["C"], v2["answer"]) == (2_000_007, "green", "red", "blue", "C")
    with pytest.raises(ValueError, match="without gaps"):
        circular_variants({"index": 1, "A": "x", "B": "", "C": "y", "D": "", "answer": "A"})


# ---- MMMU ------------------------------------------------------------------------------------------
def test_mmmu_parquet_schema_and_placeholders(data):
    scenes = {(data / s.image).read_bytes(): s for s in _scenes(data, "test")}
    for split in ("validation", "test"):
        table = pq.read_table(data / f"mmmu_{split}.parquet")
        assert table.column_names == MMMU_COLUMNS
        for field in table.schema:
            assert field.type == (IMAGE_STRUCT if field.name.startswith("image_") else pa.string()), field
        rows = table.to_pylist()
        assert len(rows) >= N_TEST // 2 - 2
        types = Counter()
        for row in rows:
            assert re.fullmatch(rf"{split}_(Math|Design|Computer_Science)_\d+", row["id"]), row["id"]
            options = ast.literal_eval(row["options"])
            assert isinstance(options, list) and isinstance(ast.literal_eval(row["img_type"]), list)
            present = [k for k in range(1, 8) if row[f"image_{k}"] is not None]
            assert present == list(range(1, len(present) + 1))
            placeholders = {int(k) for k in re.findall(r"<image (\d+)>", row["question"])}
            assert placeholders == set(present), row["id"]
            for k in present:
                with Image.open(io.BytesIO(row[f"image_{k}"]["bytes"])) as im:
                    assert im.mode == "RGB"
            assert row["question_type"] == ("multiple-choice" if options else "open")
            assert row["topic_difficulty"] in {"Easy", "Medium", "Hard"}
            types[(row["question_type"], len(present))] += 1
            if split == "test":
                assert row["answer"] == "?"
                continue
            if options:
                assert row["answer"] in string.ascii_uppercase[: len(options)]
            if "in total in the two images" in row["question"]:
                a, b = (scenes[row[f"image_{k}"]["bytes"]] for k in (1, 2))
                answer = row["answer"]
                accepted = ast.literal_eval(answer) if answer.startswith("[") else [answer]
                assert str(len(a.shapes) + len(b.shapes)) in accepted
        assert any(n >= 2 for _, n in types), types
        assert {t for t, _ in types} == {"open", "multiple-choice"}, types
