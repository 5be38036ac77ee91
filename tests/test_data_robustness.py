"""Bad input: exact skip counts by reason, no good record lost, strict-mode messages, workers 0 and 2."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from data_pipelines.collate import PaddingCollator
from data_pipelines.dataset import MultimodalDataset, StreamingMultimodalDataset, stream_source
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.formats import load_records, read_records
from data_pipelines.records import RecordError, SkipStats
from tests._data_helpers import llava, png, tiny_model

MAX_LENGTH = 200
READ_TIME = {"malformed_json": 2, "malformed_record": 2, "unknown_role": 1, "empty_conversation": 2,
             "image_count_mismatch": 2}
LOAD_TIME = {"missing_image": 1, "unreadable_image": 2, "too_long": 1}


def _noise_png(path, hw, seed=0):
    arr = np.random.default_rng(seed).integers(0, 255, (hw[0], hw[1], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _good(i, root):
    kind = i % 4
    if kind == 0:
        return llava(f"g{i}", None, [("human", f"Count to {i}."), ("gpt", f"{i}.")])
    if kind == 3:
        return llava(f"g{i}", ["s.png", "w.png"], [("human", "<image><image>Same?"), ("gpt", "No.")])
    return llava(f"g{i}", "s.png" if kind == 1 else "t.png", [("human", "What? <image>"), ("gpt", f"Shape {i}.")])


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A JSONL where every bad line sits between good ones; returns (path, image_root, good ids in order)."""
    d = tmp_path_factory.mktemp("broken")
    root = str(d / "imgs")
    png(os.path.join(root, "s.png"), (32, 32))
    png(os.path.join(root, "w.png"), (20, 48))
    png(os.path.join(root, "t.png"), (48, 20))
    png(os.path.join(root, "big.png"), (64, 64))
    full = _noise_png(os.path.join(root, "trunc.png"), (40, 40))
    data = open(full, "rb").read()
    with open(full, "wb") as f:
        f.write(data[: len(data) // 2])
    with open(os.path.join(root, "garbage.png"), "wb") as f:
        f.write(b"this is not an image at all" * 10)
    bad = [
        b"{not json",
        b'{"id": "bad-utf8", "conversations": "\xff\xfe"}',
        b"[1, 2, 3]",
        llava("no-convs", "s.png", []) | {"conversations": "nope"},
        llava("role", None, [("human", "Hi"), ("bot", "Hello")]),
        llava("no-answer", None, [("human", "Hi?")]),
        llava("blank-answer", "s.png", [("human", "<image>Hi?"), ("gpt", "   ")]),
        llava("marker-no-image", None, [("human", "<image>What?"), ("gpt", "X.")]),
        llava("two-images-one-marker", ["s.png", "w.png"], [("human", "<image>What?"), ("gpt", "X.")]),
        llava("missing", "nowhere.png", [("human", "<image>What?"), ("gpt", "X.")]),
        llava("truncated", "trunc.png", [("human", "<image>What?"), ("gpt", "X.")]),
        llava("garbage", "garbage.png", [("human", "<image>What?"), ("gpt", "X.")]),
        llava("too-long", ["big.png", "big.png", "big.png"], [("human", "<image><image><image>?"), ("gpt", "X.")]),
    ]
    lines, good_ids = [], []
    for i, item in enumerate(bad):
        g = _good(i, root)
        lines += [g, item]
        good_ids.append(g["id"])
    for i in range(len(bad), len(bad) + 4):  # good ones at the end as well
        lines.append(_good(i, root))
        good_ids.append(f"g{i}")
    path = str(d / "broken.jsonl")
    import json

    with open(path, "wb") as f:
        for item in lines:
            f.write((item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n")
    return path, root, good_ids


def _builder(max_length=MAX_LENGTH):
    return MultimodalProcessor.for_model(tiny_model(), max_length=max_length)


def test_read_time_skips_are_counted_exactly_and_neighbours_survive(broken):
    path, root, good = broken
    stats = SkipStats()
    records = load_records(path, image_root=root, stats=stats)
    assert stats.as_dict() == {"total": sum(READ_TIME.values()), "by_reason": dict(sorted(READ_TIME.items()))}
    ids = [r.id for r in records]
    # every good record, in file order; the bad images are only found when loaded
    assert [i for i in ids if i in good] == good
    assert set(ids) - set(good) == {"missing", "truncated", "garbage", "too-long"}


def test_dataset_skips_to_the_next_good_sample_and_counts_once(broken):
    path, root, good = broken
    stats = SkipStats()
    records = load_records(path, image_root=root, stats=stats)
    ds = MultimodalDataset(records, _builder(), stats=stats)
    got = [ds[i]["id"] for i in range(len(ds))]
    ids = [r.id for r in records]
    bad = {"missing", "truncated", "garbage", "too-long"}
    expected = []
    for i, rid in enumerate(ids):  # a bad index yields the next good record
        j = i
        while ids[j] in bad:
            j += 1
        expected.append(ids[j])
    assert got == expected and set(got) == set(good)
    # a second pass (and another index landing on the same bad record) does not count again
    _ = [ds[i] for i in range(len(ds))]
    assert stats.as_dict()["by_reason"] == dict(sorted({**READ_TIME, **LOAD_TIME}.items()))
    assert stats.total == sum(READ_TIME.values()) + sum(LOAD_TIME.values())
    assert "nowhere.png: file not found" in stats.examples["missing_image"][0]
    line = "data: skipped 13 record(s): empty_conversation=2, image_count_mismatch=2, malformed_json=2"
    assert stats.summary().startswith(line)


def test_streaming_dataset_yields_exactly_the_good_ones(broken):
    path, root, good = broken
    stats = SkipStats()
    stream = StreamingMultimodalDataset(stream_source(path, image_root=root), _builder(), stats=stats)
    assert [s["id"] for s in stream] == good
    assert stats.as_dict()["by_reason"] == dict(sorted({**READ_TIME, **LOAD_TIME}.items()))


@pytest.mark.parametrize("needle, reason, fragment", [
    ("{not json", "malformed_json", ":2: line does not parse as JSON"),
    ('"nope"', "malformed_record", "record 'no-convs' field 'conversations': missing or not a list"),
    ('"bot"', "unknown_role", "record 'role' field 'conversations[1].from': unknown speaker 'bot'"),
    ('"no-answer"', "empty_conversation", "record 'no-answer' field 'messages': no assistant turn with content"),
    ('"marker-no-image"', "image_count_mismatch", "field 'images': 1 <image> marker(s) in the messages but 0"),
])
def test_strict_read_errors_name_file_record_field(broken, tmp_path, needle, reason, fragment):
    path, root, _ = broken
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # the first good line, then the bad one: strict raises on the bad one, naming its line
    bad = next(ln for ln in lines if needle.encode() in ln)
    small = tmp_path / "one.jsonl"
    small.write_bytes(lines[0] + b"\n" + bad + b"\n")
    it = read_records(str(small), image_root=root, strict=True)
    assert next(it).id == "g0"
    with pytest.raises(RecordError) as e:
        next(it)
    assert e.value.reason == reason
    assert str(e.value).startswith(f"{small}:2") and fragment in str(e.value)


@pytest.mark.parametrize("rid, reason, fragment", [
    ("missing", "missing_image", "field 'images[0]': " + "{root}/nowhere.png: file not found"),
    ("truncated", "unreadable_image", "field 'images[0]': {root}/trunc.png: truncated or corrupt image data"),
    ("garbage", "unreadable_image", "field 'images[0]': {root}/garbage.png: not a recognised image format"),
    ("too-long", "too_long", "past max_length=200; an image cannot be cut"),
])
def test_strict_load_errors_name_file_record_field(broken, rid, reason, fragment):
    path, root, _ = broken
    records = load_records(path, image_root=root)
    ds = MultimodalDataset(records, _builder(), strict=True)
    i = next(k for k, r in enumerate(records) if r.id == rid)
    with pytest.raises(RecordError) as e:
        ds[i]
    assert e.value.reason == reason
    assert f"{path}:" in str(e.value) and f"record {rid!r}" in str(e.value)
    assert fragment.format(root=root) in str(e.value)


@pytest.mark.parametrize("streaming", [False, True])
def test_dataloader_workers_0_and_2_agree_and_report_exact_skips(broken, streaming):
    path, root, good = broken
    results = {}
    for workers in (0, 2):
        read_stats = SkipStats()
        if streaming:
            ds = StreamingMultimodalDataset(stream_source(path, image_root=root), _builder())
        else:
            ds = MultimodalDataset(load_records(path, image_root=root, stats=read_stats), _builder())
        loader = DataLoader(ds, batch_size=3, num_workers=workers,
                            collate_fn=PaddingCollator(tiny_model().tokenizer.pad_token_id, report_skips=True))
        stats = SkipStats()
        stats.merge(read_stats)
        rows = []
        for batch in loader:
            stats.add_events(batch.pop("data_skips"))
            rows += [r[m.bool()].tolist() for r, m in zip(batch["input_ids"], batch["attention_mask"])]
        results[workers] = rows
        expected = {**READ_TIME, **LOAD_TIME}
        assert stats.as_dict()["by_reason"] == dict(sorted(expected.items())), f"num_workers={workers}"
    if streaming:  # two workers interleave their shards: the same samples, possibly in another order
        assert sorted(map(tuple, results[0])) == sorted(map(tuple, results[2]))
        assert len(results[0]) == len(good)
    else:
        assert results[0] == results[2]


def test_all_records_bad_is_a_clear_error(tmp_path):
    rec = llava("m", "gone.png", [("human", "<image>?"), ("gpt", "X.")])
    records = load_records(str(_write(tmp_path, [rec])), image_root=str(tmp_path))
    ds = MultimodalDataset(records, _builder())
    with pytest.raises(RuntimeError, match="all 1 records are bad .*missing_image=1"):
        ds[0]
    with pytest.raises(ValueError, match="no records"):
        MultimodalDataset([], _builder())


def _write(tmp_path, recs):
    import json

    p = tmp_path / "x.json"
    p.write_text(json.dumps(recs))
    return p


def test_skipstats_merge_dedups_by_key():
    a, b = SkipStats(), SkipStats()
    a.add("missing_image", "m1", key=("f", 1, None))
    b.add("missing_image", "m1", key=("f", 1, None))
    b.add("too_long", "t", key=("f", 2, None))
    b.add("malformed_json", "no key")
    a.merge(b)
    assert a.as_dict() == {"total": 3, "by_reason": {"malformed_json": 1, "missing_image": 1, "too_long": 1}}
    with pytest.raises(ValueError, match="unknown skip reason 'oops'"):
        a.add("oops", "x")
