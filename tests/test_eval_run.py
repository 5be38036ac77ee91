"""Model runs in the eval harness: prompts, batched greedy generation, resume, torchrun sharding, CLI.

The model is tests/_tiny.py's config with random weights drawn wider than the default init (std 0.3), so
that its greedy answers differ from question to question: a model that says the same thing to every
prompt would make "batch 1 == batch N" and "sharded == single" checks pass vacuously.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch
from PIL import Image

from eval.mmbench.data import load_mmbench_tsv
from eval.mmbench.run import mmbench_question
from eval.runner import (MERGED_FILE, META_FILE, PART_PREFIX, BatchGenerator, Generated, PredictionStore, Question,
                         load_model)
from mllm.app.cli import main
from mllm.model import MultimodalLM
from tests._tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = ["--max-new-tokens", "4"]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the model's ops are tiny: one thread is as fast, and immune to OpenMP spin-waits when other
    # processes share the cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from data_pipelines.shapes import make_shapes

    out = tmp_path_factory.mktemp("shapes")
    make_shapes(str(out), n_train=20, n_test=20)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(1)
    model = MultimodalLM.build(tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt)


@pytest.fixture(scope="module")
def dev_tsv(shapes):
    return str(shapes / "mmbench_dev.tsv")


@pytest.fixture(scope="module")
def odd_tsv(shapes, tmp_path_factory):
    """Three circular groups of the Shapes DEV file, plus a text-only row and a row whose image is junk."""
    frame = pd.read_csv(shapes / "mmbench_dev.tsv", sep="\t", dtype=str, keep_default_na=False)
    keep = frame[frame["index"].astype(int) % 1_000_000 < 3].copy()
    text_only = keep.iloc[0].copy()
    text_only["index"], text_only["image"], text_only["question"] = "50", "", "Which letter comes first?"
    junk = keep.iloc[0].copy()
    junk["index"], junk["image"] = "51", base64.b64encode(b"not an image at all, " * 8).decode()
    keep = pd.concat([keep, text_only.to_frame().T, junk.to_frame().T])
    path = tmp_path_factory.mktemp("odd") / "odd.tsv"
    keep.to_csv(path, sep="\t", index=False)
    return str(path)


@pytest.fixture(scope="module")
def full_run(ckpt, dev_tsv, tmp_path_factory):
    """One uninterrupted CLI run over the whole Shapes DEV file, batch 8."""
    out = tmp_path_factory.mktemp("full")
    assert main(["eval", "mmbench", "--model", ckpt, "--data", dev_tsv, "--out", str(out),
                 "--batch-size", "8", *GEN]) == 0
    return out


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def png_image(h, w, colour):
    return Image.new("RGB", (w, h), colour)


# ---------------------------------------------------------------- prompts and generation

def test_prompt_uses_the_chat_template_and_expands_each_image(model):
    gen = BatchGenerator(model, max_new_tokens=2)
    q = Question("q", "<image>\n<image>\nWhich is red?", [png_image(20, 50, "red"), png_image(60, 30, "blue")])
    text = gen.prompt_text(q)
    assert text.startswith("<s>A chat between") and text.endswith("Which is red? ASSISTANT:")  # vicuna_v1
    (enc,) = gen.encode([q])
    n1, n2 = model.num_image_tokens((20, 50)), model.num_image_tokens((60, 30))
    assert n1 != n2  # AnyRes: the size matters
    assert enc.error is None and enc.ids.count(model.image_token_id) == n1 + n2
    first = enc.ids.index(model.image_token_id)
    runs = enc.ids[first:first + n1 + 1 + n2 + 1]  # image 1, "\n", image 2, "\n"
    assert runs[:n1] == [model.image_token_id] * n1 and runs[n1] != model.image_token_id
    assert runs[n1 + 1:n1 + 1 + n2] == [model.image_token_id] * n2
    assert enc.ids[0] == model.tokenizer.bos_token_id

    (text_only,) = gen.encode([Question("t", "Say something.", [])])
    assert model.image_token_id not in text_only.ids and text_only.error is None
    (bad,) = gen.encode([Question("b", "<image>\nTwo?", [])])
    assert "1 <image> marker(s) but the row has 0 image(s)" in bad.error


def test_mmbench_question_puts_one_image_marker_per_image_before_the_prompt(dev_tsv):
    data = load_mmbench_tsv(dev_tsv)
    q = mmbench_question(data, data[0])
    assert q.key == 0 and len(q.images) == 1 and q.text.startswith("<image>\nQuestion: ")
    assert q.text.count("<image>") == 1 and "Options:\nA. " in q.text


def test_batched_generation_equals_one_at_a_time(model, dev_tsv):
    data = load_mmbench_tsv(dev_tsv)
    circular = [row for row in data if int(row["index"]) % 1_000_000 < 3]  # 3 questions, all their passes
    questions = [mmbench_question(data, row) for row in circular]
    questions.append(Question("text", "Which colour is the sky?", []))
    questions.append(Question("two", "<image>\n<image>\nSame shape?",
                              [png_image(30, 90, (200, 30, 30)), png_image(70, 40, (30, 30, 200))]))
    gen = BatchGenerator(model, max_new_tokens=6)
    lengths = {len(e.ids) for e in gen.encode(questions)}
    assert len(questions) >= 8 and len(lengths) > 3  # the batch really is padded

    one_by_one = [gen([q])[0] for q in questions]
    assert gen.prefill_tokens == gen.prompt_tokens  # alone, every prompt token is prefilled
    gen.prompt_tokens = gen.prefill_tokens = 0
    all_at_once = gen(questions)
    # the circular passes of a question share their image and prompt prefix: prefilled once
    assert gen.prefill_tokens < 0.7 * gen.prompt_tokens
    in_threes = [p for i in range(0, len(questions), 3) for p in gen(questions[i:i + 3])]
    unshared = BatchGenerator(model, max_new_tokens=6, share_prefixes=False)(questions)
    assert all_at_once == one_by_one and in_threes == one_by_one and unshared == one_by_one
    assert len(set(one_by_one)) >= 5, one_by_one  # answers depend on the question: the check means something


def wide_random(connector="mlp2x_gelu", llm_type="llama", template="vicuna_v1"):
    cfg = tiny_config(connector=connector, llm_type=llm_type)
    cfg.chat_template = template
    model = MultimodalLM.build(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("connector,llm_type,template", [("mlp2x_gelu", "llama", "vicuna_v1"),
                                                         ("qformer", "opt", "chatml"),
                                                         ("mlp2x_gelu", "qwen2", "llama3")])
def test_generation_matches_plain_model_generate(connector, llm_type, template):
    """The split prefill (shared prefixes cached, suffixes after a gap of padding) gives what one
    left-padded ``MultimodalLM.generate`` call over the whole batch gives."""
    model = wide_random(connector, llm_type, template)
    gen = BatchGenerator(model, max_new_tokens=5)
    green, red = png_image(40, 70, (10, 200, 10)), png_image(60, 30, (200, 10, 10))
    questions = [Question(i, f"<image>\nQuestion: {q}\nOptions:\nA. red\nB. green\n", [img]) for i, (q, img)
                 in enumerate([("What colour is the shape?", green), ("Is it large?", green),
                               ("Where is it?", red), ("Where is the thing?", red), ("How many?", green)])]
    questions.append(Question(9, "No image here.", []))
    encoded = gen.encode(questions)
    width = max(len(e.ids) for e in encoded)
    ids = torch.full((len(encoded), width), model.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, e in enumerate(encoded):
        ids[r, width - len(e.ids):] = torch.tensor(e.ids)
        mask[r, width - len(e.ids):] = 1
    pixels = gen.processor.images([im for q in questions for im in q.images])
    plain = model.generate(ids, mask, pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"],
                           max_new_tokens=5, eos_token_id=gen.stop_ids)
    expected = []
    for row in plain.tolist():
        cut = next((j for j, t in enumerate(row) if t in gen.stop_ids), len(row))
        expected.append(model.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    assert gen(questions) == expected and len(set(expected)) >= 4
    assert gen.prefill_tokens < 0.8 * gen.prompt_tokens  # the two images' rows shared their prefixes


# ---------------------------------------------------------------- the CLI end to end

def test_cli_mmbench_runs_the_model_and_scores(full_run, dev_tsv, ckpt):
    data = load_mmbench_tsv(dev_tsv)
    scores = json.loads((full_run / "scores.json").read_text())
    assert set(scores) == {"circular", "vanilla"}
    assert "Overall" in scores["circular"] and "Overall" in scores["vanilla"]
    assert all(0.0 <= v <= 1.0 for part in scores.values() for v in part.values())

    raw = read_jsonl(full_run / MERGED_FILE)
    assert [r["index"] for r in raw] == [int(row["index"]) for row in data]  # each row once, in data order
    assert all(r["prompt_tokens"] > 100 and 0 <= r["new_tokens"] <= 4 for r in raw)
    assert not [n for n in os.listdir(full_run) if n.startswith(PART_PREFIX)]  # merged and removed

    table = pd.read_csv(full_run / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert len(table) == len(data) and {"prediction", "extracted", "hit", "group_hit"} <= set(table.columns)
    assert table["prediction"].tolist() == [r["prediction"] for r in raw]

    info = json.loads((full_run / "run_info.json").read_text())
    assert info["model"] == os.path.abspath(ckpt) and info["prompt_version"] == "vlmevalkit-mcq-v1"
    assert len(info["data"]["sha256"]) == 64 and set(info["versions"]) == {"mllm", "torch", "transformers"}
    g = info["generation"]
    assert (g["batch_size"], g["max_new_tokens"], g["chat_template"], g["world_size"]) == (8, 4, "vicuna_v1", 1)
    assert g["generated_now"] == len(data) and g["resumed"] == 0 and info["row_errors"] == {}


def test_raw_predictions_file_is_a_valid_predictions_file(full_run, dev_tsv, tmp_path):
    out = tmp_path / "rescored"
    assert main(["eval", "mmbench", "--data", dev_tsv, "--predictions", str(full_run / MERGED_FILE),
                 "--out", str(out)]) == 0
    assert json.loads((out / "scores.json").read_text()) == json.loads((full_run / "scores.json").read_text())


def test_resume_after_a_crash_runs_each_row_once(full_run, ckpt, dev_tsv, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    args = ["eval", "mmbench", "--model", ckpt, "--data", dev_tsv, "--out", str(out), "--batch-size", "8", *GEN]
    real = BatchGenerator.generate
    calls = []

    def crashing(self, batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(self, batch)

    monkeypatch.setattr(BatchGenerator, "generate", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(args)
    part = out / f"{PART_PREFIX}00000.jsonl"
    assert len(read_jsonl(part)) == 16 and not (out / "scores.json").exists()
    with open(part, "a", encoding="utf-8") as f:
        f.write('{"index": 999, "predic')  # torn last line: killed mid-write

    calls.clear()
    monkeypatch.setattr(BatchGenerator, "generate", lambda self, batch: calls.append(len(batch)) or real(self, batch))
    assert main(args) == 0
    total = len(load_mmbench_tsv(dev_tsv))
    assert sum(calls) == total - 16  # only the rows the crash left undone
    raw = read_jsonl(out / MERGED_FILE)
    assert sorted(r["index"] for r in raw) == sorted({r["index"] for r in raw}) and len(raw) == total
    assert raw == read_jsonl(full_run / MERGED_FILE)
    assert (out / "scores.json").read_text() == (full_run / "scores.json").read_text()
    info = json.loads((out / "run_info.json").read_text())
    assert info["generation"]["resumed"] == 16 and info["generation"]["generated_now"] == total - 16

    calls.clear()  # a third run finds everything done: nothing generated, same outputs
    assert main(args) == 0 and calls == []
    assert read_jsonl(out / MERGED_FILE) == raw


def test_resuming_with_other_settings_is_refused_unless_overwrite(full_run, ckpt, dev_tsv, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(full_run, out)
    args = ["eval", "mmbench", "--model", ckpt, "--data", dev_tsv, "--out", str(out), "--max-new-tokens", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens differ" in err and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0
    assert all(r["new_tokens"] <= 3 for r in read_jsonl(out / MERGED_FILE))
    assert json.loads((out / META_FILE).read_text())["max_new_tokens"] == 3


def test_text_only_rows_run_and_bad_rows_are_counted_not_fatal(ckpt, odd_tsv, tmp_path, capsys):
    out = tmp_path / "odd"
    assert main(["eval", "mmbench", "--model", ckpt, "--data", odd_tsv, "--out", str(out), "--batch-size", "4",
                 *GEN]) == 0
    raw = {r["index"]: r for r in read_jsonl(out / MERGED_FILE)}
    assert "error" not in raw[50] and raw[50]["new_tokens"] > 0  # text-only: generated, no image tokens
    assert raw[51]["prediction"] == "" and "row index 51" in raw[51]["error"]
    info = json.loads((out / "run_info.json").read_text())
    assert list(info["row_errors"]) == ["51"] and info["generation"]["errors"] == 1
    assert info["counts"]["rows"] == len(raw)

    code = main(["eval", "mmbench", "--model", ckpt, "--data", odd_tsv, "--out", str(tmp_path / "strict"),
                 "--strict", *GEN])
    assert code == 2 and "row index 51" in capsys.readouterr().err


def test_cli_mmmu_runs_the_model_and_scores(ckpt, shapes, tmp_path):
    from eval.mmmu.data import load_mmmu

    data = str(shapes / "mmmu_validation.parquet")
    out = tmp_path / "mmmu"
    assert main(["eval", "mmmu", "--model", ckpt, "--data", data, "--out", str(out), "--batch-size", "4", *GEN]) == 0
    rows = load_mmmu(data)
    raw = read_jsonl(out / MERGED_FILE)
    assert [r["id"] for r in raw] == [row["id"] for row in rows]
    per_row = read_jsonl(out / "predictions.jsonl")
    assert [r["response"] for r in per_row] == [r["prediction"] for r in raw]
    scores = json.loads((out / "scores.json").read_text())
    assert "Overall" in scores and 0.0 <= scores["Overall"] <= 1.0
    assert json.loads((out / "run_info.json").read_text())["prompt_version"] == "mmmu-official-v1"
    # multi-image questions: every <image> marker got its image's tokens (otherwise the model raises)
    assert any(r["prompt_tokens"] > 300 for r in raw)


# ---------------------------------------------------------------- sharding

def test_prediction_store_merges_parts_in_data_order(tmp_path):
    for rank, keys in ((0, [0, 2, 4]), (1, [1, 3])):
        store = PredictionStore(str(tmp_path), "index", rank)
        store.open()
        store.append([Generated(k, f"p{k}", 5, 1) for k in keys])
        store.close()
    merged = PredictionStore(str(tmp_path), "index").merge([4, 3, 2, 1, 0])
    assert list(merged) == [4, 3, 2, 1, 0]
    assert [r["index"] for r in read_jsonl(tmp_path / MERGED_FILE)] == [4, 3, 2, 1, 0]
    assert os.listdir(tmp_path) == [MERGED_FILE]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_match_one_process(full_run, ckpt, dev_tsv, tmp_path):
    """Two gloo ranks, resuming a directory a single process had started: merged == single-process run."""
    out = tmp_path / "sharded"
    out.mkdir()
    shutil.copy(full_run / META_FILE, out / META_FILE)
    done = read_jsonl(full_run / MERGED_FILE)[:20]
    (out / MERGED_FILE).write_text("".join(json.dumps(r) + "\n" for r in done))

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mllm.app.cli", "eval", "mmbench", "--model", ckpt,
           "--data", dev_tsv, "--out", str(out), "--batch-size", "3", *GEN]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert read_jsonl(out / MERGED_FILE) == read_jsonl(full_run / MERGED_FILE)
    assert (out / "scores.json").read_text() == (full_run / "scores.json").read_text()
    assert not [n for n in os.listdir(out) if n.startswith(PART_PREFIX)]
    g = json.loads((out / "run_info.json").read_text())["generation"]
    total = len(load_mmbench_tsv(dev_tsv))
    assert (g["world_size"], g["resumed"], g["generated_now"]) == (2, 20, total - 20)
    assert proc.stdout.count("Circular") == 1  # only rank 0 scores and prints
