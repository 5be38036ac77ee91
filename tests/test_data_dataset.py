"""Datasets and pre-flight: sample contents, lazy images, the Shapes world end to end, pre-flight errors."""
from __future__ import annotations

import os

import pytest
import torch
from tokenizers import normalizers
from torch.utils.data import DataLoader

from data_pipelines.collate import PaddingCollator
from data_pipelines.dataset import MultimodalDataset, StreamingMultimodalDataset, stream_source
from data_pipelines.processor import MultimodalProcessor
from data_pipelines.formats import load_records
from data_pipelines.image_processor import AnyResImageProcessor
from data_pipelines.preflight import PreflightError, preflight
from data_pipelines.records import Record
from data_pipelines.sampler import LengthGroupedSampler
from data_pipelines.templates import get_template
from data_pipelines.tokenize import IGNORE_INDEX, AllMaskedError, TokenizationMismatch
from mllm.tokenizer import ensure_image_token, train_tiny_tokenizer
from tests._data_helpers import llava, png, tiny_model, write_json
from tests.test_data_tokenize import _NoTargets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    for name, hw in {"sq": (32, 32), "wide": (30, 90), "big": (64, 64)}.items():
        png(str(d / f"{name}.png"), hw)
    recs = [llava("one", "sq.png", [("human", "<image>\nWhat?"), ("gpt", "A square.")]),
            llava("two", ["wide.png", "big.png"], [("human", "<image>\n<image>\nBoth?"), ("gpt", "Yes."),
                                                  ("human", "Sure?"), ("gpt", "Quite.")]),
            llava("txt", None, [("human", "Hello?"), ("gpt", "Hi there.")])]
    return write_json(str(d / "train.json"), recs), str(d)


def test_sample_contents(data):
    path, root = data
    model = tiny_model()
    ds = MultimodalDataset.for_model(load_records(path), model, max_length=400)
    s = ds[1]
    assert s["id"] == "two" and s["modality"] == "image" and s["image_sizes"] == [(30, 90), (64, 64)]
    assert [t.shape for t in s["pixel_values"]] == [(3, 3, 32, 32), (5, 3, 32, 32)]  # T from the geometry
    n_image = int((s["input_ids"] == model.image_token_id).sum())
    assert n_image == model.num_image_tokens((30, 90)) + model.num_image_tokens((64, 64))
    assert s["length"] == s["input_ids"].shape[0] == s["labels"].shape[0]
    target = model.tokenizer.decode(s["labels"][s["labels"] != IGNORE_INDEX])
    assert target == " Yes.</s> Quite.</s>"
    t = ds[2]
    assert t["modality"] == "text" and t["pixel_values"] == [] and t["image_sizes"] == []
    # estimates for the sampler need no image loading; the image records come out longer
    assert ds.modalities == ["image", "image", "text"]
    assert ds.lengths[1] > ds.lengths[0] > ds.lengths[2] > 0
    full = t["length"]
    short = MultimodalDataset.for_model(load_records(path), model, max_length=full - 2)
    assert short[2]["id"] == "txt" and short[2]["length"] == full - 2  # text-only overflow is cut at the end
    assert torch.equal(short[2]["input_ids"], t["input_ids"][:-2])


def test_builder_refuses_a_processor_that_disagrees_with_the_geometry():
    model = tiny_model()
    with pytest.raises(ValueError, match="disagrees with the model geometry"):
        MultimodalProcessor(model.tokenizer, get_template("plain"), model.geometry, AnyResImageProcessor(32, None))


def test_preflight_passes_and_reports(data):
    path, _ = data
    ds = MultimodalDataset.for_model(load_records(path), tiny_model(), max_length=400)
    report = preflight(ds)
    assert report["checked"] == 3 and report["skipped"]["total"] == 0
    assert 0 < report["target_tokens"] < report["tokens"]
    stream = StreamingMultimodalDataset.for_model(stream_source(path), tiny_model(), max_length=400)
    assert preflight(stream, num_samples=2)["checked"] == 2


def test_preflight_catches_tokenization_mismatch_and_all_masked(data):
    path, _ = data
    model = tiny_model()
    lossy = train_tiny_tokenizer()
    ensure_image_token(lossy)
    lossy.backend_tokenizer.normalizer = normalizers.Lowercase()
    proc = AnyResImageProcessor.from_config(model.config)
    bad_tok = MultimodalDataset(load_records(path), MultimodalProcessor(lossy, get_template("vicuna_v1"),
                                                                  model.geometry, proc, max_length=400))
    bad_tok[0]  # training alone would not notice
    with pytest.raises(TokenizationMismatch, match=r"train.json\[0\] \(id=one\): the token ids do not decode"):
        preflight(bad_tok)
    masked = MultimodalDataset(load_records(path), MultimodalProcessor(model.tokenizer, _NoTargets(), model.geometry,
                                                                 proc, max_length=400))
    with pytest.raises(AllMaskedError, match=r"\(id=one\): no token has a label"):
        preflight(masked)


def test_preflight_counts_bad_records_and_fails_when_none_build(tmp_path):
    png(str(tmp_path / "ok.png"), (32, 32))
    recs = [Record("gone", [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
                   [str(tmp_path / "gone.png")]),
            Record("ok", [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
                   [str(tmp_path / "ok.png")])]
    ds = MultimodalDataset.for_model(recs, tiny_model())
    report = preflight(ds)
    assert report["checked"] == 1 and report["skipped"]["by_reason"] == {"missing_image": 1}
    with pytest.raises(PreflightError, match="none of the first 1 records could be built"):
        preflight(ds, indices=[0], num_samples=1)


def test_shapes_world_end_to_end(tmp_path):
    """The embedded default: Shapes LLaVA JSON -> dataset -> sampler -> loader -> model loss."""
    from data_pipelines import shapes

    shapes.make_shapes(str(tmp_path / "shapes"), seed=0, n_train=6, n_test=2)
    model = tiny_model()
    for name in ("captions_train.json", "vqa_train.json", "instruct_train.json"):
        records = load_records(os.path.join(tmp_path, "shapes", name))
        template = "plain" if name.startswith("captions") else None
        ds = MultimodalDataset.for_model(records, model, template=template, max_length=512)
        sampler = LengthGroupedSampler(ds.lengths, ds.modalities, batch_size=4, seed=0)
        report = preflight(ds, indices=sampler.rank_indices())
        assert report["checked"] == len(ds) and report["skipped"]["total"] == 0
        loader = DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=PaddingCollator(model.tokenizer.pad_token_id))
        batch = next(iter(loader))
        loss = model(**batch).loss
        assert torch.isfinite(loss) and loss.item() > 0


def test_fixed_resolution_model_gets_one_tile_and_a_fixed_count(data):
    path, _ = data
    model = tiny_model(anyres=False)
    ds = MultimodalDataset.for_model(load_records(path), model, max_length=400)
    s = ds[1]
    assert [t.shape for t in s["pixel_values"]] == [(1, 3, 32, 32)] * 2
    assert int((s["input_ids"] == model.image_token_id).sum()) == 2 * 16  # 4x4 patches, CLS dropped
    assert torch.isfinite(model(**PaddingCollator(model.tokenizer.pad_token_id)([s, ds[0]])).loss)
