"""``mllm import`` (mllm.app.export.importer): llava-hf Llava / LlavaNext checkpoints -> mllm checkpoints.

    .venv/bin/python -m pytest -q tests/test_import.py

Tiny random llava-hf checkpoints are written by transformers itself (5.x layout: ``vision_tower.*`` without
``vision_model.``, processor settings nested in processor_config.json) and by our exporter (4.x layout).
The imported model must compute what the transformers model computes, and exporting it again must give a
checkpoint with the original model's logits.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from data_pipelines.image_processor import AnyResImageProcessor
from data_pipelines.templates import get_template
from mllm.app.cli import main
from mllm.app.export import export_model
from mllm.app.export.importer import import_llava
from mllm.app.export.verify import default_image, verify_export
from mllm.model import MultimodalLM
from mllm.tokenizer import ensure_image_token, train_tiny_tokenizer
from tests._tiny import tiny_config

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
             patch_size=8)
LLM = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=1025, max_position_embeddings=512, bos_token_id=0, eos_token_id=1,
           pad_token_id=3, tie_word_embeddings=False)
PINS = [[32, 64], [64, 32], [64, 64]]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def write_llava_hf(path, *, next_: bool, siglip: bool = False, seed: int = 0):
    """A random tiny llava-hf checkpoint saved by transformers 5.x (model, tokenizer, processor)."""
    from transformers import (CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig,
                              LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor,
                              LlavaProcessor)

    tok = train_tiny_tokenizer()
    image_id = ensure_image_token(tok)
    vision = dict(TOWER, model_type="siglip_vision_model" if siglip else "clip_vision_model")
    common = dict(vision_config=vision, text_config=dict(LLM), image_token_index=image_id,
                  vision_feature_layer=-2, vision_feature_select_strategy="full" if siglip else "default",
                  tie_word_embeddings=False)
    size = {"shortest_edge": 32}
    crop = {"height": 32, "width": 32}
    if next_:
        config = LlavaNextConfig(image_grid_pinpoints=PINS, **common)
        model_cls, proc_cls = LlavaNextForConditionalGeneration, LlavaNextProcessor
        image_proc = LlavaNextImageProcessorPil(size=size, crop_size=crop, image_grid_pinpoints=PINS,
                                                image_mean=MEAN, image_std=STD)
    else:
        config = LlavaConfig(**common)
        model_cls, proc_cls = LlavaForConditionalGeneration, LlavaProcessor
        image_proc = CLIPImageProcessorPil(size=size, crop_size=crop, image_mean=MEAN, image_std=STD)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(path)
    processor = proc_cls(image_processor=image_proc, tokenizer=tok, patch_size=8,
                         vision_feature_select_strategy=common["vision_feature_select_strategy"],
                         num_additional_image_tokens=0 if siglip else 1,
                         chat_template=get_template("vicuna_v1").jinja())
    processor.save_pretrained(path)
    return model, processor


def image():
    return default_image(32)  # 47 x 74: AnyRes with padding


def ours_logits(model, img, prompt):
    proc = AnyResImageProcessor.from_config(model.config, tile_size=model.geometry.tile_size, num_threads=1)
    batch = proc([img])
    n = model.num_image_tokens(tuple(batch["image_sizes"][0].tolist()))
    ids = model.tokenizer(prompt.replace("<image>", "<image>" * n), add_special_tokens=False,
                          return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return ids, model(ids, pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"]).logits


def theirs_logits(model, processor, img, prompt):
    inputs = processor(images=[img], text=prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return inputs["input_ids"], model(**inputs).logits


PROMPT = "<s>A chat. USER: <image>\nWhat is shown? ASSISTANT:"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("next_,siglip", [(True, False), (False, True)])
def test_import_transformers_5x_checkpoint_matches_it(tmp_path, next_, siglip):
    hf, processor = write_llava_hf(tmp_path / "hf", next_=next_, siglip=siglip)
    model = import_llava(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    cfg = model.config
    assert cfg.anyres.enabled == next_ and (cfg.anyres.grid_pinpoints == PINS if next_ else True)
    assert cfg.vision.kind == ("hf_siglip" if siglip else "hf_clip") and cfg.vision.feature_layer == -2
    assert cfg.vision.select_strategy == ("full" if siglip else "default")
    assert list(cfg.image.mean) == MEAN and list(cfg.image.std) == STD and cfg.image.size == 32
    assert cfg.chat_template == "vicuna_v1"  # matched by its Jinja
    reloaded = MultimodalLM.from_pretrained(str(tmp_path / "ckpt"))
    ids, ours = ours_logits(reloaded, image(), PROMPT)
    their_ids, theirs = theirs_logits(hf, processor, image(), PROMPT)
    assert torch.equal(ids, their_ids)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_import_then_export_round_trips_to_the_original_logits(tmp_path):
    from transformers import LlavaNextForConditionalGeneration

    hf, processor = write_llava_hf(tmp_path / "hf", next_=True)
    assert main(["import", "--from", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    model = MultimodalLM.from_pretrained(str(tmp_path / "ckpt"))
    report = export_model(model, str(tmp_path / "again"), log=None)
    assert report.path == "llava_next"
    result = verify_export(model, str(tmp_path / "again"))  # fresh transformers process
    assert result.ok and result.max_abs_diff <= 1e-4
    again = LlavaNextForConditionalGeneration.from_pretrained(str(tmp_path / "again")).eval()
    _, original = theirs_logits(hf, processor, image(), PROMPT)
    _, exported = theirs_logits(again, processor, image(), PROMPT)
    torch.testing.assert_close(exported, original, atol=1e-5, rtol=1e-5)


def test_import_our_4x_layout_export(tmp_path):
    torch.manual_seed(3)
    source = MultimodalLM.build(tiny_config(anyres=True, tower="hf_siglip", tie=True)).eval()
    export_model(source, str(tmp_path / "hf"), log=None)
    imported = import_llava(str(tmp_path / "hf"))  # nothing saved without out_dir
    assert imported.llm.config.tie_word_embeddings
    _, a = ours_logits(source, image(), PROMPT)
    _, b = ours_logits(imported, image(), PROMPT)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_import_errors_name_the_file_and_field(tmp_path):
    write_llava_hf(tmp_path / "hf", next_=False)
    src = tmp_path / "hf"

    def edit(name, **changes):
        path = src / name
        data = json.loads(path.read_text())
        saved = dict(data)
        data.update(changes)
        path.write_text(json.dumps(data))
        return lambda: path.write_text(json.dumps(saved))

    restore = edit("config.json", model_type="blip-2")
    with pytest.raises(ValueError, match=r"config.json: model_type 'blip-2' is not a native Llava"):
        import_llava(str(src))
    restore()
    restore = edit("config.json", projector_hidden_act="relu")
    with pytest.raises(ValueError, match="projector_hidden_act='relu'"):
        import_llava(str(src))
    restore()
    restore = edit("config.json", image_token_index=7)
    with pytest.raises(ValueError, match="image_token_index is 7"):
        import_llava(str(src))
    restore()
    os.rename(src / "model.safetensors", src / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"no safetensors weights \(found \['pytorch_model.bin'\]\)"):
        import_llava(str(src))
    assert main(["import", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


def test_imported_model_trains(tmp_path):
    """Continue-training smoke: the imported model takes a gradient step and the loss moves."""
    write_llava_hf(tmp_path / "hf", next_=True)
    model = import_llava(str(tmp_path / "hf")).train()
    ids, _ = ours_logits(model, image(), PROMPT + " a disc")
    proc = AnyResImageProcessor.from_config(model.config, tile_size=32, num_threads=1)
    batch = proc([image()])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        loss = model(ids, pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"], labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
