"""`mllm eval` and `mllm chat` take an exported transformers directory, or a llava-hf checkpoint written by
transformers itself, directly as --model: same predictions / answers as our own checkpoint."""
from __future__ import annotations

import json
import os

import pytest
import torch

from mllm.app.cli import main
from mllm.app.export import export_model
from mllm.model import MultimodalLM
from tests._tiny import tiny_config

GEN = ["--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from data_pipelines.shapes import make_shapes

    root = tmp_path_factory.mktemp("hfdirs")
    make_shapes(str(root / "shapes"), n_train=4, n_test=8)
    torch.manual_seed(1)
    model = MultimodalLM.build(tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)  # answers that differ between questions
    ours = str(root / "ours")
    model.save_pretrained(ours)
    export = str(root / "export")
    export_model(ours, export, log=None)
    # a llava-hf checkpoint as transformers itself writes it (its own on-disk layout)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    llava_hf = str(root / "llava_hf")
    AutoModelForImageTextToText.from_pretrained(export).save_pretrained(llava_hf)
    AutoProcessor.from_pretrained(export).save_pretrained(llava_hf)
    return {"ours": ours, "export": export, "llava_hf": llava_hf, "tsv": str(root / "shapes" / "mmbench_dev.tsv"),
            "root": root}


def _eval(dirs, model, out):
    assert main(["eval", "mmbench", "--model", model, "--data", dirs["tsv"], "--out", str(out), "--batch-size", "4",
                 *GEN]) == 0
    import pandas as pd

    df = pd.read_csv(os.path.join(out, "predictions.tsv"), sep="\t")
    return dict(zip(df["index"], df["prediction"].astype(str)))


@pytest.mark.parametrize("which", ["export", "llava_hf"])
def test_eval_accepts_transformers_directories(dirs, which):
    ref = _eval(dirs, dirs["ours"], dirs["root"] / "e_ours")
    got = _eval(dirs, dirs[which], dirs["root"] / f"e_{which}")
    assert got == ref and len(set(ref.values())) > 1


@pytest.mark.parametrize("which", ["export", "llava_hf"])
def test_chat_accepts_transformers_directories(dirs, which, capsys):
    img = sorted(os.listdir(dirs["root"] / "shapes" / "images" / "test"))[0]
    img = str(dirs["root"] / "shapes" / "images" / "test" / img)
    answers = {}
    for name in ("ours", which):
        assert main(["chat", "--model", dirs[name], "--image", img, "--prompt", "What colour?", *GEN]) == 0
        answers[name] = capsys.readouterr().out.strip().splitlines()[-1]
    assert answers[which] == answers["ours"]
