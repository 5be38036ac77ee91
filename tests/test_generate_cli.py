"""`mllm generate` (PNG files, determinism, clear errors) and the remote-code export of a model with a DiT head
(loaded with plain transformers + trust_remote_code in a fresh process: the same pixels for the same seed).

    .venv/bin/python -m pytest -q tests/test_generate_cli.py
"""
from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mllm.app.cli import main
from mllm.model import MultimodalLM

from ._tiny import make_batch, tiny_config

HEAD = {"num_queries": 4, "image_size": 32,
        "dit": {"preset": "tiny", "input_size": 32, "hidden_size": 32, "depth": 2, "num_heads": 2}}
PROMPT = "a red circle at the top and a blue star on the left"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model_with_head(anyres: bool = True) -> MultimodalLM:
    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_config(anyres=anyres))
    model.add_gen_head(HEAD)
    # a fresh DiT outputs exact zeros (adaLN-Zero); random weights everywhere make every part of the head count
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.gen_head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gen_ckpt") / "model")
    _model_with_head().save_pretrained(path)
    return path


def _png(path: str) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
        return np.asarray(im)


def test_generate_writes_deterministic_rgb_pngs(ckpt, tmp_path, capsys):
    a, b, c = (str(tmp_path / n) for n in ("a.png", "b.png", "c.png"))
    for out, seed in ((a, 7), (b, 7), (c, 8)):
        assert main(["generate", "--model", ckpt, "--prompt", PROMPT, "--out", out, "--steps", "3",
                     "--seed", str(seed)]) == 0
    assert filecmp.cmp(a, b, shallow=False)  # same seed: same bytes
    assert not np.array_equal(_png(a), _png(c))  # another seed: another picture
    # the file holds what the Python API draws for the same seed
    model = MultimodalLM.from_pretrained(ckpt)
    img = model.generate_images([PROMPT], steps=3, cfg_scale=1.5, seed=7)[0]  # the CLI's default guidance
    expected = (img.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    assert np.array_equal(_png(a), expected)
    assert capsys.readouterr().out.split() == [a, b, c]


def test_generate_n_images_are_numbered(ckpt, tmp_path):
    out = str(tmp_path / "sub" / "many.png")
    assert main(["generate", "--model", ckpt, "--prompt", PROMPT, "--out", out, "--steps", "2", "--n", "3",
                 "--cfg", "1.0"]) == 0
    files = sorted(os.listdir(tmp_path / "sub"))
    assert files == ["many_0.png", "many_1.png", "many_2.png"]
    pics = [_png(str(tmp_path / "sub" / f)) for f in files]
    assert not np.array_equal(pics[0], pics[1])  # one batch, different noise per image


def test_generate_errors_name_the_problem(ckpt, tmp_path, capsys):
    plain = str(tmp_path / "plain")
    MultimodalLM.build(tiny_config()).save_pretrained(plain)
    out = str(tmp_path / "x.png")
    assert main(["generate", "--model", plain, "--prompt", PROMPT, "--out", out]) == 2
    assert "has no image-generation head" in capsys.readouterr().err
    assert main(["generate", "--model", ckpt, "--prompt", PROMPT, "--out", out, "--steps", "0"]) == 2
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err
    assert main(["generate", "--model", ckpt, "--prompt", PROMPT, "--out", str(tmp_path / "x.jpg")]) == 2
    assert "must be a .png file" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", PROMPT, "--out", out]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_remote_export_with_head_samples_the_same_images_in_a_fresh_process(ckpt, tmp_path):
    from mllm.app.export import export_model
    from mllm.app.export.remote import GEN_DIR, verify_gen_export

    model = MultimodalLM.from_pretrained(ckpt)
    out = str(tmp_path / "hf")
    report = export_model(ckpt, out, verify=True, log=None)  # logits + greedy tokens, and the gen path
    assert report.path == "remote" and "image-generation head" in report.reason
    assert report.verify.ok
    assert report.gen_verify["identical"] and report.gen_verify["max_abs_diff"] == 0.0
    assert report.gen_verify["shape"] == [2, 3, 32, 32]
    for name in ("dit.py", "flow.py", "condition.py"):  # mllm's own files, verbatim
        assert filecmp.cmp(os.path.join(GEN_DIR, name), os.path.join(out, name), shallow=False)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["extra_heads"]["gen"]["num_queries"] == 4
    result = verify_gen_export(model, out, seed=3, steps=3, cfg_scale=2.5)
    assert result["identical"] and result["max_abs_diff"] == 0.0 and result["shape"] == [2, 3, 32, 32]
    assert result["model_class"] == "MllmForConditionalGeneration"
    # the understanding logits of the model with a head equal those of the same model without one
    bare = MultimodalLM.build(tiny_config())
    bare.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("gen_head.")})
    batch = make_batch(model, [("USER: <image>\nWhat is it? ASSISTANT:", [(32, 48)])])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, bare.eval()(**batch).logits)


def test_verify_gen_export_catches_a_different_head(ckpt, tmp_path):
    from mllm.app.export import export_model
    from mllm.app.export.remote import verify_gen_export
    from mllm.app.export.verify import VerifyError

    model = MultimodalLM.from_pretrained(ckpt)
    out = str(tmp_path / "hf")
    export_model(model, out, log=None)
    with torch.no_grad():
        model.gen_head.dit.final_layer.linear.bias.add_(0.05)
    with pytest.raises(VerifyError, match="generate_images differs from the source model"):
        verify_gen_export(model, out, steps=2)


@pytest.mark.parametrize("condition", [{"condition": "queries", "llm_layers": [-1], "refiner_layers": 0,
                                        "prediction": "velocity"},
                                       {"condition": "prompt+queries", "llm_layers": [0, 1, -1],
                                        "refiner_layers": 1, "prediction": "x0"}])
def test_export_samples_the_same_images_for_every_condition_option(condition, tmp_path):
    from mllm.app.export import export_model

    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_config(anyres=False))
    model.add_gen_head({**HEAD, **condition})
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.gen_head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    report = export_model(model.eval(), str(tmp_path / "hf"), verify=True, log=None)
    assert report.gen_verify["identical"]


def test_re_export_removes_stale_modeling_files(ckpt, tmp_path):
    """A native export written over a remote-code one must not leave the old code (dit.py, flow.py,
    condition.py, modeling_mllm.py, ...) beside the new weights."""
    from mllm.app.export import export_model
    from mllm.app.export.remote import GEN_FILES, REMOTE_FILES

    out = str(tmp_path / "hf")
    export_model(ckpt, out, log=None)
    assert all(os.path.isfile(os.path.join(out, n)) for n in REMOTE_FILES + GEN_FILES)
    torch.manual_seed(0)
    bare = MultimodalLM.build(tiny_config())
    report = export_model(bare, out, overwrite=True, log=None)
    assert report.path == "llava_next"
    assert not any(os.path.exists(os.path.join(out, n)) for n in REMOTE_FILES + GEN_FILES)
