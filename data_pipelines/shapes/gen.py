"""Shapes "gen scenes" for the image-generation head: prompts in, small square pictures out.

    from data_pipelines.shapes.gen import make_gen_data, prompt_of, parse_prompt, read_gen_json
    summary = make_gen_data("data/shapes", seed=0, n_train=2000, n_test=200, size=48, max_shapes=2)
    records = read_gen_json("data/shapes/gen_test.json")       # validated records
    prompt_of([{"colour": "red", "kind": "circle", "position": "top"}])  # "a red circle at the top"
    parse_prompt("a red circle at the top and a blue star on the left")
    # -> [{"colour": "red", "kind": "circle", "position": "top"}, {"colour": "blue", "kind": "star", ...}]

Each image is ``size`` x ``size`` RGB with 1..``max_shapes`` LARGE shapes on the light background, placed
in the five "plus" cells of the 3x3 grid exactly as ``scene.py`` places them (one shape per cell, a
(colour, kind) pair at most once per image) and drawn by ``render.py``; no text labels. Written into
``out_dir``:

    images/gen_train/gen_train_000000.png ...   images/gen_test/gen_test_000000.png ...
    gen_train.json, gen_test.json   JSON lists of {"id", "image" (relative to the json's directory),
                                    "prompt", "shapes": [{"colour", "kind", "position"}, ...]}

Shapes are listed (and named in the prompt) in reading order of their cells: top, left, center, right,
bottom. Every image is drawn from its own random stream per (seed, split, index), so the same seed gives
the same bytes. The test split is held out by prompt: a test draw whose prompt text occurs in the train
split is redrawn, so every test prompt is a combination the generator never trained on. With the
defaults nearly every one-shape prompt occurs in train, so the test split is mostly two-shape prompts.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List, Mapping, Sequence, Set, Tuple

from data_pipelines.shapes.render import render_scene, save_png
from data_pipelines.shapes.scene import COLOURS, KINDS, REGIONS, Scene, _place_shape, scene_rng
from data_pipelines.shapes.tasks import PLACE

__all__ = ["make_gen_data", "prompt_of", "parse_prompt", "read_gen_json", "gen_image_path", "GEN_OUTPUTS",
           "GEN_SPLITS", "MAX_SHAPES"]

GEN_SPLITS = ("gen_train", "gen_test")
GEN_OUTPUTS = ("images/gen_train", "images/gen_test", "gen_train.json", "gen_test.json")
MAX_SHAPES = len(REGIONS)       # one shape per "plus" cell
MIN_SIZE = 24                   # below this a large shape is under 8 px and kinds stop being distinct
MAX_REDRAWS = 1000              # a test draw that keeps repeating train prompts means the space is exhausted
_PHRASE_TO_POSITION = {phrase: pos for pos, phrase in PLACE.items()}


# ---- prompts ---------------------------------------------------------------------------------------------
def _field(shape: Any, key: str) -> str:
    return shape[key] if isinstance(shape, Mapping) else getattr(shape, key)


def prompt_of(shapes: Sequence[Any]) -> str:
    """The prompt for ``shapes`` (dicts or ``scene.Shape``s with colour, kind, position), in the given order:
    "a red circle at the top and a blue star on the left" (three or more are joined with commas)."""
    if not shapes:
        raise ValueError("prompt_of: need at least one shape")
    parts = []
    for i, s in enumerate(shapes):
        colour, kind, position = _field(s, "colour"), _field(s, "kind"), _field(s, "position")
        for name, value, known in (("colour", colour, COLOURS), ("kind", kind, KINDS), ("position", position, PLACE)):
            if value not in known:
                raise ValueError(f"prompt_of: shapes[{i}].{name} {value!r} is not one of {', '.join(known)}")
        article = "an" if colour[0] in "aeiou" else "a"
        parts.append(f"{article} {colour} {kind} {PLACE[position]}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _parse_part(part: str, text: str) -> Dict[str, str]:
    words = part.split()
    if len(words) < 4:
        raise ValueError(f"parse_prompt: cannot read {part!r} in prompt {text!r} "
                         "(expected '<a|an> <colour> <kind> <place>', e.g. 'a red circle at the top')")
    article, colour, kind, place = words[0], words[1], words[2], " ".join(words[3:])
    if colour not in COLOURS:
        raise ValueError(f"parse_prompt: unknown colour {colour!r} in prompt {text!r} (known: {', '.join(COLOURS)})")
    if kind not in KINDS:
        raise ValueError(f"parse_prompt: unknown shape kind {kind!r} in prompt {text!r} (known: {', '.join(KINDS)})")
    if place not in _PHRASE_TO_POSITION:
        raise ValueError(f"parse_prompt: unknown place {place!r} in prompt {text!r} "
                         f"(known: {', '.join(repr(p) for p in _PHRASE_TO_POSITION)})")
    if article != ("an" if colour[0] in "aeiou" else "a"):
        raise ValueError(f"parse_prompt: wrong article {article!r} before {colour!r} in prompt {text!r}")
    return {"colour": colour, "kind": kind, "position": _PHRASE_TO_POSITION[place]}


def parse_prompt(text: str) -> List[Dict[str, str]]:
    """The inverse of ``prompt_of``: prompt text -> [{"colour", "kind", "position"}, ...] in prompt order.
    Case, surrounding spaces and a final full stop are forgiven; anything else raises a ValueError that
    quotes the prompt."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"parse_prompt: empty or non-text prompt {text!r}")
    body = " ".join(text.strip().lower().rstrip(".").split())
    head, sep, last = body.rpartition(" and ")
    pieces = ([p.strip() for p in head.split(",")] + [last]) if sep else [body]
    shapes = [_parse_part(p, text) for p in pieces]
    seen: Set[Tuple[str, str]] = set()
    for s in shapes:
        for key, what in (((s["colour"], s["kind"]), "shape"), ((s["position"],), "position")):
            if key in seen:
                raise ValueError(f"parse_prompt: {what} {' '.join(key)!r} named twice in prompt {text!r}")
            seen.add(key)
    return shapes


# ---- data --------------------------------------------------------------------------------------------------
def _draw(seed: int, split: str, index: int, attempt: int, size: int, max_shapes: int) -> Scene:
    rng = scene_rng(seed, split, index, "gen" if attempt == 0 else f"gen-retry{attempt}")
    n = rng.randint(1, max_shapes)
    positions = sorted(rng.sample(list(REGIONS), n), key=REGIONS.__getitem__)
    pairs: List[Tuple[str, str]] = []
    while len(pairs) < n:  # colours and kinds may repeat, a (colour, kind) pair may not
        pair = (rng.choice(list(COLOURS)), rng.choice(KINDS))
        if pair not in pairs:
            pairs.append(pair)
    shapes = tuple(_place_shape(rng, size, size, kind, colour, "large", position)
                   for (colour, kind), position in zip(pairs, positions))
    scene_id = f"{split}_{index:06d}"
    return Scene(id=scene_id, split=split, image=f"images/{split}/{scene_id}.png", width=size, height=size,
                 shapes=shapes, label=None)


def _record(scene: Scene) -> Dict[str, Any]:
    shapes = [{"colour": s.colour, "kind": s.kind, "position": s.position} for s in scene.shapes]
    return {"id": scene.id, "image": scene.image, "prompt": prompt_of(shapes), "shapes": shapes}


def _make_split(out_dir: str, seed: int, split: str, n: int, size: int, max_shapes: int,
                banned: Set[str]) -> List[Dict[str, Any]]:
    records = []
    for i in range(n):
        for attempt in range(MAX_REDRAWS):
            scene = _draw(seed, split, i, attempt, size, max_shapes)
            record = _record(scene)
            if record["prompt"] not in banned:
                break
        else:
            raise ValueError(f"make_gen_data: {split} image {i}: {MAX_REDRAWS} draws all repeat a train prompt; "
                             f"raise max_shapes (now {max_shapes}) or lower n_train")
        save_png(render_scene(scene), os.path.join(out_dir, scene.image))
        records.append(record)
    return records


def _write_json(path: str, records: List[Dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(records, indent=1) + "\n")


def make_gen_data(out_dir: str, seed: int = 0, n_train: int = 2000, n_test: int = 200, size: int = 48,
                  max_shapes: int = 2, overwrite: bool = False) -> Dict[str, Any]:
    """Write the gen splits into ``out_dir`` (see the module docstring) and return a summary dict:
    {"seed", "size", "max_shapes", "files": {"gen_train.json": {"records", "distinct_prompts"}, ...}}.
    Existing gen outputs (``GEN_OUTPUTS``) are an error unless ``overwrite``; other files are left alone."""
    for name, value, least in (("n_train", n_train, 1), ("n_test", n_test, 1), ("size", size, MIN_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"make_gen_data: {name} must be an integer >= {least}, got {value!r}")
    if isinstance(max_shapes, bool) or not isinstance(max_shapes, int) or not 1 <= max_shapes <= MAX_SHAPES:
        raise ValueError(f"make_gen_data: max_shapes must be an integer in 1..{MAX_SHAPES}, got {max_shapes!r}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    existing = [p for p in GEN_OUTPUTS if os.path.exists(os.path.join(out_dir, p))]
    if existing and not overwrite:
        raise ValueError(f"{out_dir} already holds gen data ({', '.join(existing)}); pass overwrite=True to replace it")
    for p in existing:
        path = os.path.join(out_dir, p)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for split in GEN_SPLITS:
        os.makedirs(os.path.join(out_dir, "images", split))

    train = _make_split(out_dir, seed, "gen_train", n_train, size, max_shapes, banned=set())
    train_prompts = {r["prompt"] for r in train}
    test = _make_split(out_dir, seed, "gen_test", n_test, size, max_shapes, banned=train_prompts)
    files = {}
    for split, records in (("gen_train", train), ("gen_test", test)):
        _write_json(os.path.join(out_dir, f"{split}.json"), records)
        files[f"{split}.json"] = {"records": len(records), "distinct_prompts": len({r["prompt"] for r in records})}
    return {"seed": seed, "size": size, "max_shapes": max_shapes, "files": files}


# ---- reading -----------------------------------------------------------------------------------------------
def read_gen_json(path: str) -> List[Dict[str, Any]]:
    """Load a gen_{train,test}.json and check every record; errors name the file, record and field."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read gen data: {e}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    for i, r in enumerate(records):
        where = f"{path} record {i}" + (f" ({r.get('id')!r})" if isinstance(r, dict) and "id" in r else "")
        if not isinstance(r, dict):
            raise ValueError(f"{where}: expected an object, got {type(r).__name__}")
        for key in ("id", "image", "prompt", "shapes"):
            if key not in r:
                raise ValueError(f"{where}: missing field {key!r}")
        if not isinstance(r["shapes"], list) or not r["shapes"]:
            raise ValueError(f"{where}: field 'shapes' must be a non-empty list")
        for j, s in enumerate(r["shapes"]):
            for key, known in (("colour", COLOURS), ("kind", KINDS), ("position", REGIONS)):
                if not isinstance(s, dict) or s.get(key) not in known:
                    raise ValueError(f"{where}: shapes[{j}].{key} must be one of {', '.join(known)}, "
                                     f"got {s.get(key) if isinstance(s, dict) else s!r}")
    return records


def gen_image_path(json_path: str, record: Mapping[str, Any]) -> str:
    """The image file of ``record``: its "image" is relative to the directory of the json it came from."""
    return os.path.join(os.path.dirname(os.path.abspath(os.fspath(json_path))), record["image"])
