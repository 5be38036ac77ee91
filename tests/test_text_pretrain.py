"""Text pretraining of the tiny LLM (train_stages.text_pretrain), the connector's scaled init and the demo's
blank-image MMBench copy: small, fast checks of what each promises."""
from __future__ import annotations

import base64
import io
import json
import os

import pytest
import torch
from PIL import Image

from ._train_fixtures import make_world, weights


def test_text_pretraining_trains_the_llm_only_and_writes_a_start_checkpoint(tmp_path):
    from data_pipelines.shapes.tasks import describe
    from train_stages.text_pretrain import TextPretrainConfig, context_messages, load_scenes, text_pretrain

    world = make_world(str(tmp_path), n_train=30, n_test=4)
    scenes = load_scenes(os.path.join(world, "scenes_train.jsonl"))
    msgs = context_messages(scenes[0], __import__("random").Random(0), max_turns=2)
    assert msgs[0]["content"].startswith(describe(scenes[0]) + "\n") and msgs[1]["role"] == "assistant"
    torch.manual_seed(0)
    from mllm.model import MultimodalLM
    from mllm.presets import get_preset

    start = os.path.join(tmp_path, "start")
    MultimodalLM.build(get_preset("tiny")).save_pretrained(start)
    out = os.path.join(tmp_path, "text")
    s = text_pretrain(TextPretrainConfig(scenes=os.path.join(world, "scenes_train.jsonl"), output_dir=out,
                                         init_from=start, steps=6, batch_size=4, warmup_steps=2, eval_every=3,
                                         num_threads=1), progress=False)
    assert s["steps"] == 6 and s["last_loss"] < s["first_loss"]
    assert 0.0 <= s["heldout_context_acc"] <= 1.0 and 0.0 <= s["heldout_no_context_acc"] <= 1.0
    before, after = weights(start), weights(out)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"llm"}, changed  # the tower and the connector are left as init_from had them
    curve = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in curve] == list(range(1, 7)) and all("loss" in r and "time" in r for r in curve)
    with pytest.raises(ValueError, match="not a Shapes scene"):
        bad = os.path.join(tmp_path, "bad.jsonl")
        open(bad, "w").write('{"id": "x"}\n')
        load_scenes(bad)


@pytest.mark.parametrize("std", [None, 0.02])
def test_mlp_connector_output_scale(std):
    from connectors.mlp import MLPConnector

    torch.manual_seed(0)
    conn = MLPConnector(64, 192, output_std=std)
    out = conn(torch.randn(8, 36, 64))
    if std is None:
        assert out.std() > 0.1  # PyTorch's default init: far above a token embedding's 0.02
    else:
        assert 0.5 * std < float(out.std()) < 2 * std


def _png_b64(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_blank_mmbench_tsv_keeps_sizes_prompts_and_references(tmp_path):
    from eval.mmbench.data import load_mmbench_tsv
    from mllm.app.demo_report import blank_mmbench_tsv

    img = Image.new("RGB", (60, 40), (240, 240, 235))
    img.paste((200, 30, 30), (10, 10, 30, 30))
    header = ["index", "question", "A", "B", "answer", "category", "l2-category", "image"]
    rows = [["0", "What colour?", "red", "blue", "A", "colour", "attribute", _png_b64(img)],
            ["1000000", "What colour?", "blue", "red", "B", "colour", "attribute", "0"]]
    src, dst = os.path.join(tmp_path, "dev.tsv"), os.path.join(tmp_path, "blank.tsv")
    with open(src, "w") as f:
        f.write("\n".join("\t".join(r) for r in [header] + rows) + "\n")
    assert blank_mmbench_tsv(src, dst) == 1
    data = load_mmbench_tsv(dst)
    assert [r["question"] for r in data] == ["What colour?", "What colour?"]
    blank = data.images(data[1])[0]  # the reference resolves to the blanked image
    assert blank.size == (60, 40) and blank.getcolors() == [(2400, (240, 240, 235))]
