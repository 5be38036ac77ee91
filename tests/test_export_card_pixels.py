"""Every export has a model card; the README's and the card's AutoProcessor call gives the training pixels in
this transformers version (the plain call may not), and it is the call --verify runs."""
from __future__ import annotations

import ast
import json
import os
import re

import pytest
import torch
import transformers
from PIL import Image

from mllm.app.export import export_model
from mllm.app.export.hf_runner import processor_kwargs
from mllm.model import MultimodalLM
from tests._tiny import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _call_kwargs(text: str) -> dict:
    """Keyword arguments of the first `AutoProcessor.from_pretrained(...)` line in ``text``."""
    line = next(ln for ln in text.splitlines() if "AutoProcessor.from_pretrained(" in ln and "=" in ln)
    call = ast.parse(line.split("#")[0].strip()).body[0].value
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    torch.manual_seed(0)
    ck = str(root / "ck")
    MultimodalLM.build(tiny_config()).save_pretrained(ck)
    # a training record beside the checkpoint, as the stage runner leaves it
    json.dump({"stage": "instruct", "init_from": None, "model": "tiny", "data": [{"path": "data/instruct.json"}],
               "modules": {"llm": {"mode": "lora"}}, "learning_rate": 2e-4}, open(os.path.join(ck, "train_config.json"), "w"))
    json.dump({"steps": 12, "last_loss": 1.25, "world_size": 8}, open(os.path.join(ck, "summary.json"), "w"))
    ev = root / "eval"
    ev.mkdir()
    json.dump({"circular": {"Overall": 0.42}}, open(ev / "scores.json", "w"))
    json.dump({"benchmark": "mmbench"}, open(ev / "run_info.json", "w"))
    out = str(root / "hf")
    export_model(ck, out, log=None, scores=[str(ev / "scores.json")])
    return out


def test_every_export_has_a_model_card(exported):
    card = open(os.path.join(exported, "README.md")).read()
    for needle in ("LlavaNextForConditionalGeneration", "vision tower", "LLM", "| instruct | data/instruct.json |",
                   "llm: lora", "| mmbench | circular.Overall | 0.42 |", "AutoModelForImageTextToText",
                   f"vllm serve {exported}"):
        assert needle in card, needle


def test_readme_and_card_show_the_call_that_gives_training_pixels(exported):
    from transformers import AutoProcessor

    major = int(transformers.__version__.split(".")[0])
    readme = open(os.path.join(ROOT, "README.md")).read()
    card = open(os.path.join(exported, "README.md")).read()
    shown = _call_kwargs(readme)
    assert shown == _call_kwargs(card)
    want = processor_kwargs(transformers.__version__)  # what --verify's fresh process runs
    if major >= 5:
        assert shown == want
    else:
        assert "use_fast=False" in re.sub(r"\s", "", readme.split("AutoProcessor.from_pretrained(")[1][:200])
    from data_pipelines.processor import MultimodalProcessor

    builder = MultimodalProcessor.for_model(MultimodalLM.from_pretrained(os.path.join(os.path.dirname(exported), "ck")))
    g = torch.Generator().manual_seed(0)
    img = Image.fromarray((torch.rand(77, 131, 3, generator=g) * 255).to(torch.uint8).numpy())
    pixels, _ = builder.image_processor.process(img)  # (T, 3, S, S): what training sees

    def diff(**kw):
        pv = AutoProcessor.from_pretrained(exported, **kw).image_processor(images=[img], return_tensors="pt")
        pv = pv["pixel_values"][0, : pixels.shape[0]].float()
        return (pv - pixels).abs().max().item()

    assert diff(**shown) == 0.0
    plain = type(AutoProcessor.from_pretrained(exported).image_processor).__name__
    if major >= 5 and not plain.endswith("Pil"):  # torchvision importable: the plain call's resize differs
        assert diff() > 1e-3, plain
