"""Format readers: LLaVA JSON/JSONL, ShareGPT (both content styles), HF datasets sources, auto-detection."""
from __future__ import annotations

import base64
import io
import json
import os

import pytest
from PIL import Image

from data_pipelines.dataset import MultimodalDataset
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.formats import detect_format, load_records, read_records
from data_pipelines.records import SkipStats
from tests._data_helpers import llava, png, tiny_model, write_json, write_lines


@pytest.fixture()
def images(tmp_path):
    root = tmp_path / "imgs"
    return {name: png(str(root / f"{name}.png"), hw) for name, hw in
            {"a": (32, 48), "b": (40, 20), "c": (16, 16)}.items()}


def _msgs(rec):
    return [(m["role"], m["content"]) for m in rec.messages]


def test_llava_json_image_moved_to_front_multi_image_and_text_only(tmp_path, images):
    data = [
        llava("1", "imgs/a.png", [("human", "What is this?\n<image>"), ("gpt", "A square.")]),
        llava("2", ["imgs/a.png", "imgs/b.png"], [("system", "Be brief."), ("human", "Compare <image> and <image>."),
                                                  ("gpt", "Same."), ("human", "Sure?"), ("gpt", "Yes.")]),
        llava("3", None, [("human", "Say hi."), ("gpt", "Hi.")]),
        llava("4", "imgs/c.png", [("gpt", "I lead."), ("human", "<image>Describe."), ("gpt", "Dots.")]),
    ]
    path = write_json(str(tmp_path / "train.json"), data)
    assert detect_format(path) == "llava"
    recs = load_records(path)
    assert [r.id for r in recs] == ["1", "2", "3", "4"]
    assert _msgs(recs[0]) == [("user", "<image>\nWhat is this?"), ("assistant", "A square.")]
    assert recs[0].images == [os.path.join(str(tmp_path), "imgs/a.png")]
    assert _msgs(recs[1])[:2] == [("system", "Be brief."), ("user", "<image>\n<image>\nCompare  and .")]
    assert len(recs[1].images) == 2
    assert recs[2].images == [] and _msgs(recs[2]) == [("user", "Say hi."), ("assistant", "Hi.")]
    # a leading assistant turn is dropped, as LLaVA does
    assert _msgs(recs[3]) == [("user", "<image>\nDescribe."), ("assistant", "Dots.")]
    assert str(recs[0].origin) == f"{path}[0]"
    kept = load_records(path, image_placement="keep")
    assert _msgs(kept[0])[0] == ("user", "What is this?\n<image>")


def test_llava_jsonl_streams_with_image_root(tmp_path, images):
    lines = [llava(str(i), "a.png", [("human", "<image>\nQ"), ("gpt", f"A{i}")]) for i in range(5)]
    path = write_lines(str(tmp_path / "train.jsonl"), lines)
    it = read_records(path, image_root=str(tmp_path / "imgs"))
    first = next(it)  # a generator: nothing past the first record is needed yet
    assert first.images == [images["a"]] and str(first.origin) == f"{path}:1"
    assert [r.id for r in it] == ["1", "2", "3", "4"]
    assert [r.id for r in read_records(path, max_samples=2)] == ["0", "1"]


def test_sharegpt_string_content_with_top_level_images(tmp_path, images):
    rec = {"id": "s1", "images": ["imgs/a.png", "imgs/b.png"],
           "messages": [{"role": "system", "content": "S"},
                        {"role": "user", "content": "Left <image> right <image>?"},
                        {"role": "assistant", "content": "Both red."}]}
    path = write_lines(str(tmp_path / "chat.jsonl"), [rec])
    assert detect_format(path) == "sharegpt"
    (r,) = load_records(path)
    assert _msgs(r) == [("system", "S"), ("user", "Left <image> right <image>?"), ("assistant", "Both red.")]
    assert r.images == [images["a"], images["b"]]


def test_sharegpt_parts_content_local_paths_and_urls(tmp_path, images):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    rec = {"id": "p1", "images": ["imgs/c.png"],
           "messages": [{"role": "user", "content": [
               {"type": "image", "image": "imgs/a.png"},
               {"type": "text", "text": "and"},
               {"type": "image"},  # takes the next top-level image
               {"type": "image_url", "image_url": {"url": "file://" + images["b"]}},
               {"type": "image_url", "image_url": {"url": data_url}}]},
               {"role": "assistant", "content": [{"type": "text", "text": "Four."}]}]}
    path = write_json(str(tmp_path / "chat.json"), [rec])
    (r,) = load_records(path, format="sharegpt")
    assert r.messages[0]["content"] == "<image>\nand<image>\n<image>\n<image>\n"
    assert r.messages[1]["content"] == "Four."
    assert r.images[:3] == [images["a"], images["c"], images["b"]] and r.images[3] == buf.getvalue()


def test_sharegpt_image_count_mismatch_counted(tmp_path, images):
    recs = [{"id": "x", "images": ["imgs/a.png"], "messages": [{"role": "user", "content": "<image><image>"},
                                                                {"role": "assistant", "content": "?"}]},
            {"id": "y", "images": ["imgs/a.png", "imgs/b.png"],
             "messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "?"}]},
            {"id": "z", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
                "url": "https://example.com/a.png"}}]}, {"role": "assistant", "content": "?"}]}]
    path = write_lines(str(tmp_path / "c.jsonl"), recs)
    stats = SkipStats()
    assert list(read_records(path, stats=stats)) == []
    assert stats.as_dict() == {"total": 3, "by_reason": {"image_count_mismatch": 2, "malformed_record": 1}}
    assert "remote image URL" in stats.examples["malformed_record"][0]


# ---- HF datasets ------------------------------------------------------------------------------------------
def _hf_rows(images):
    with open(images["a"], "rb") as f:
        a_bytes = f.read()
    return {
        "id": ["h0", "h1", "h2"],
        "image": [{"bytes": a_bytes, "path": None}, {"bytes": None, "path": images["b"]},
                  {"bytes": None, "path": images["c"]}],
        "conversations": [[{"from": "human", "value": f"<image>\nQ{i}"}, {"from": "gpt", "value": f"A{i}"}]
                          for i in range(3)],
    }


def _check_hf(recs, a_bytes_expected=True):
    recs = list(recs)
    assert [r.id for r in recs] == ["h0", "h1", "h2"]
    assert _msgs(recs[1]) == [("user", "<image>\nQ1"), ("assistant", "A1")]
    assert isinstance(recs[0].images[0], bytes) and recs[0].images[0][:4] == b"\x89PNG"
    return recs


def test_hf_parquet_and_save_to_disk_with_image_feature(tmp_path, images):
    import datasets

    ds = datasets.Dataset.from_dict(_hf_rows(images)).cast_column("image", datasets.Image())
    pq = str(tmp_path / "train.parquet")
    ds.to_parquet(pq)
    disk = str(tmp_path / "disk")
    ds.save_to_disk(disk)
    cache = str(tmp_path / "cache")
    for path in (pq, disk):
        assert detect_format(path) == "hf"
        lazy = load_records(path, cache_dir=cache) if path == pq else load_records(path)
        assert len(lazy) == 3
        _check_hf(lazy[i] for i in range(3))
        _check_hf(read_records(path, streaming=True, cache_dir=cache))
        # the sampler's estimates read only the text columns, and agree with the converted records
        builder = MultimodalProcessor.for_model(tiny_model())
        converted = MultimodalDataset([lazy[i] for i in range(3)], builder)
        assert MultimodalDataset(lazy, builder).lengths == converted.lengths
        assert MultimodalDataset(lazy, builder).modalities == ["image"] * 3
        # undecoded: to_parquet kept the path-only image's path, save_to_disk embedded its bytes
        with open(images["c"], "rb") as f:
            assert lazy[2].images == ([images["c"]] if path == pq else [f.read()])


def test_hf_jsonl_with_relative_paths_and_streaming(tmp_path, images):
    rows = [{"id": f"j{i}", "image": "imgs/a.png", "messages": [{"role": "user", "content": "<image>Hi"},
                                                               {"role": "assistant", "content": f"Yo{i}"}]}
            for i in range(4)]
    path = write_lines(str(tmp_path / "rows.jsonl"), rows)
    cache = str(tmp_path / "cache")
    for streaming in (False, True):
        recs = list(read_records(path, format="hf", streaming=streaming, cache_dir=cache))
        assert [r.id for r in recs] == ["j0", "j1", "j2", "j3"]
        assert recs[0].images == [images["a"]] and recs[3].messages[1]["content"] == "Yo3"


def test_hf_imagefolder_with_captions(tmp_path):
    folder = tmp_path / "folder"
    png(str(folder / "x.png"), (20, 30))
    png(str(folder / "y.png"), (30, 20))
    write_lines(str(folder / "metadata.jsonl"), [{"file_name": "x.png", "caption": "A wide one."},
                                                 {"file_name": "y.png", "caption": "A tall one."}])
    recs = list(read_records(str(folder), cache_dir=str(tmp_path / "cache")))
    assert sorted(r.messages[1]["content"] for r in recs) == ["A tall one.", "A wide one."]
    assert all(r.messages[0] == {"role": "user", "content": "<image>"} for r in recs)
    got = {os.path.basename(r.images[0]) if isinstance(r.images[0], str) else "bytes" for r in recs}
    assert got == {"x.png", "y.png"}
    streamed = list(read_records(str(folder), streaming=True, cache_dir=str(tmp_path / "cache")))
    assert len(streamed) == 2
    lazy = load_records(str(folder), cache_dir=str(tmp_path / "cache"))
    assert MultimodalDataset(lazy, MultimodalProcessor.for_model(tiny_model())).modalities == ["image", "image"]


def test_auto_detection_errors(tmp_path):
    path = write_lines(str(tmp_path / "odd.jsonl"), [{"foo": 1}])
    with pytest.raises(ValueError, match="neither 'conversations'.*nor 'messages'"):
        detect_format(path)
    with pytest.raises(ValueError, match="cannot detect the data format"):
        detect_format(str(tmp_path / "data.csv"))
    with pytest.raises(ValueError, match="unknown data format 'csv'; known: hf, llava, sharegpt"):
        list(read_records(path, format="csv"))
    bad = tmp_path / "broken.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        list(read_records(str(bad), format="llava"))
    with open(tmp_path / "obj.json", "w") as f:
        json.dump({"a": 1}, f)
    with pytest.raises(ValueError, match="must hold an array of records"):
        list(read_records(str(tmp_path / "obj.json"), format="llava"))
