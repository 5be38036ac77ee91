"""``mllm chat`` and mllm/app/chat/: one-shot and interactive, the training prompt format, errors, streaming,
exported checkpoints.

    .venv/bin/python -m pytest -q tests/test_chat.py

The model is tests/_tiny.py's config with its LLM weights drawn wider than the default init (std 0.3), so
its greedy answers depend on the image and the text: a model that says the same thing to every prompt
would make "same answer as by hand" and "export == source" pass vacuously.
"""
from __future__ import annotations

import io
import json
import os

import pytest
import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from data_pipelines.image_processor import AnyResImageProcessor
from data_pipelines.templates import get_template
from data_pipelines.tokenize import encode_conversation
from mllm.app.chat import (ChatError, ChatSession, GenerationSettings, MllmBackend, StreamPrinter, TransformersBackend,
                       load_backend, run_interactive)
from mllm.app.cli import main
from mllm.app.export import export_model
from mllm.model import MultimodalLM
from tests._tiny import tiny_config

MAX_NEW = 10
GEN = ["--max-new-tokens", str(MAX_NEW)]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_config(anyres=True)).eval()
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    ckpt = str(root / "ckpt")
    model.save_pretrained(ckpt)
    paths = {"root": root, "ckpt": ckpt}
    # non-square sizes, so AnyRes picks different grids (and token counts) for them
    for name, size, colour in [("red", (50, 40), (220, 20, 20)), ("blue", (30, 70), (20, 20, 220))]:
        paths[name] = str(root / f"{name}.png")
        Image.new("RGB", size, colour).save(paths[name])
    paths["not_image"] = str(root / "notes.png")
    with open(paths["not_image"], "wb") as f:
        f.write(b"this is not a png")
    return paths


@pytest.fixture(scope="module")
def model(files):
    return MultimodalLM.from_pretrained(files["ckpt"]).eval()


@pytest.fixture(scope="module")
def ours(model, files):
    return MllmBackend(model, source=files["ckpt"])


@pytest.fixture(scope="module")
def native_export(files):
    out = str(files["root"] / "hf_native")
    report = export_model(files["ckpt"], out, log=None)
    assert report.path == "llava_next"
    return out


@pytest.fixture(scope="module")
def remote_export(files):
    # transformers copies remote code into its modules cache under the directory's base name (and refreshes
    # the copy when the files change): one fixed name keeps that cache from growing with every run
    out = str(files["root"] / "mllm_test_chat_remote")
    assert export_model(files["ckpt"], out, path="remote", log=None).path == "remote"
    return out


def by_hand(model, question, image_paths, max_new_tokens=MAX_NEW):
    """The answer built without mllm.app.chat: template text, <image> runs, training processor, model.generate."""
    tok = model.tokenizer
    images = [Image.open(p).convert("RGB") for p in image_paths]
    content = "<image>\n" * len(images) + question  # LLaVA style: images in front of the text
    text = get_template(model.config.chat_template).generation_prompt(
        [{"role": "user", "content": content}], bos_token=tok.bos_token, eos_token=tok.eos_token)
    kwargs = {}
    if images:
        batch = AnyResImageProcessor.from_config(model.config, tile_size=model.geometry.tile_size)(images)
        parts = text.split("<image>")
        text = parts[0] + "".join("<image>" * model.num_image_tokens(hw) + part
                                  for hw, part in zip(batch["image_sizes"].tolist(), parts[1:]))
        kwargs = {"pixel_values": batch["pixel_values"], "image_sizes": batch["image_sizes"]}
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    new = model.generate(ids, torch.ones_like(ids), **kwargs, max_new_tokens=max_new_tokens,
                         eos_token_id=tok.eos_token_id)[0].tolist()
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True).strip()


def chat(args, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["chat", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- one-shot

@pytest.mark.parametrize("images", [["red"], ["red", "blue"], []])
def test_one_shot_answer_is_model_generate_on_the_training_format_prompt(files, model, capsys, images):
    paths = [files[n] for n in images]
    image_args = ["--image", *paths] if paths else []
    code, out, err = chat(["--model", files["ckpt"], *image_args, "--prompt", "What is shown?", *GEN], capsys)
    assert code == 0, err
    expected = by_hand(model, "What is shown?", paths)
    assert expected  # the model says something
    assert out == expected + "\n"  # the answer and nothing else on stdout
    assert "loading" in err


def test_answers_depend_on_the_images(files, capsys):
    answers = {chat(["--model", files["ckpt"], "--image", files[n], "--prompt", "Colour?", *GEN], capsys)[1]
               for n in ("red", "blue")}
    assert len(answers) == 2


def test_one_shot_errors_exit_2_with_one_line(files, capsys):
    cases = [
        (["--image", str(files["root"] / "nope.png"), "--prompt", "Hi"], "nope.png"),
        (["--image", files["not_image"], "--prompt", "Hi"], "notes.png"),
        (["--prompt", "red " * 600], "context is 512 tokens"),
        (["--prompt", "What is <image> here?"], "/image"),
        (["--prompt", "Hi", "--top-p", "0"], "--top-p"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--prompt", "Hi", "--device", "cuda"], "no CUDA device"))
    for args, needle in cases:
        code, out, err = chat(["--model", files["ckpt"], *args, *GEN], capsys)
        assert code == 2, args
        assert out == ""
        lines = [ln for ln in err.splitlines() if ln.startswith("mllm chat: error:")]
        assert len(lines) == 1 and needle in lines[0], err


def test_sampling_follows_temperature_and_seed(files, capsys):
    base = ["--model", files["ckpt"], "--image", files["red"], "--prompt", "Describe it.", *GEN]
    greedy = chat(base, capsys)[1]
    assert chat(base + ["--top-p", "0.5"], capsys)[1] == greedy  # top-p alone does not sample
    sampled = [chat(base + ["--temperature", "1.5", "--seed", str(s)], capsys)[1] for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # seeded: reproducible
    assert len({greedy, *sampled}) > 1  # and really sampling
    with pytest.raises(ValueError, match="max-new-tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=-1)


# ---------------------------------------------------------------- interactive

def test_interactive_cli_streams_answers_and_reset_starts_over(files, model, capsys, monkeypatch):
    script = "\n".join([f"/image {files['red']}", "What is shown?", "And then?", "/reset",
                        f"/image {files['red']}", "What is shown?", "/exit", "Never answered."]) + "\n"
    code, out, err = chat(["--model", files["ckpt"], *GEN], capsys, stdin=script, monkeypatch=monkeypatch)
    assert code == 0, err
    first = by_hand(model, "What is shown?", [files["red"]])
    session = ChatSession(MllmBackend(model), GenerationSettings(MAX_NEW))
    session.attach_image(files["red"])
    assert session.ask("What is shown?") == first
    second = session.ask("And then?")
    # after /reset the same first turn gets the same answer: nothing of the old conversation is left
    assert out == f"{first}\n{second}\n{first}\n"
    assert "attached" in err and "conversation cleared" in err


def test_multi_turn_prompt_keeps_history_in_the_training_format(ours, model, files):
    session = ChatSession(ours, GenerationSettings(MAX_NEW))
    out, err = io.StringIO(), io.StringIO()
    script = f"/image {files['red']}\nWhat is shown?\n/image {files['blue']}\nAnd here?\nAnd now?\n"
    assert run_interactive(session, io.StringIO(script), out, err) == 0
    (u1, a1, u2, a2, u3, a3) = session.turns
    assert [m["role"] for m in session.turns] == ["user", "assistant"] * 3
    assert len(session.images) == 2 and not session.pending
    prompt = session.last_prompt
    # the third prompt holds both earlier images, both earlier answers, in the template's format
    sizes = [(im.height, im.width) for im in session.images]
    counts = [model.num_image_tokens(hw) for hw in sizes]
    assert prompt.num_image_tokens == sum(counts)
    assert f"ASSISTANT: {a1['content']}</s>" in prompt.text and f"ASSISTANT: {a2['content']}</s>" in prompt.text
    assert prompt.text.count("<image>") == 2 and prompt.text.endswith("USER: And now? ASSISTANT:")
    # the prompt is exactly the start of the training encoding of the whole conversation
    train = encode_conversation(session.turns, get_template("vicuna_v1"), model.tokenizer, counts)
    assert train.input_ids[:prompt.length] == prompt.input_ids[0].tolist()
    assert train.labels[prompt.length - 1] == -100 and train.labels[prompt.length] != -100
    assert out.getvalue() == "".join(m["content"] + "\n" for m in (a1, a2, a3))

    run_interactive(session, io.StringIO("/reset\nAnd now?\n/help\n"), io.StringIO(), err)
    assert len(session.turns) == 2 and not session.images
    assert a1["content"] not in session.last_prompt.text and session.last_prompt.num_image_tokens == 0
    assert "/image PATH" in err.getvalue()


def test_errors_never_end_the_session(ours, files):
    session = ChatSession(ours, GenerationSettings(MAX_NEW))
    out, err = io.StringIO(), io.StringIO()
    script = "\n".join([
        "/image nope.png",                 # missing
        f"/image {files['not_image']}",    # not an image
        "/image",                          # no path
        f"/image {files['red']}",
        "red " * 600,                      # too long: the turn and its image are dropped
        "What is <image>?",                # a raw image marker in the text
        "/frobnicate",
        "Hello?",
    ]) + "\n"
    assert run_interactive(session, io.StringIO(script), out, err) == 0
    errors = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
    assert len(errors) == 6, err.getvalue()
    assert "nope.png" in errors[0] and "file not found" in errors[0]
    assert "notes.png" in errors[1]
    assert "needs a path" in errors[2]
    assert "context is 512 tokens" in errors[3] and "1 attached image(s) dropped" in errors[3]
    assert "/image PATH" in errors[4]
    assert "unknown command /frobnicate" in errors[5]
    # the session went on: one answer, to the last message, with no image
    assert len(session.turns) == 2 and not session.images
    assert out.getvalue() == session.turns[1]["content"] + "\n"


def test_history_over_the_context_is_reported_with_a_reset_hint(ours):
    session = ChatSession(ours, GenerationSettings(MAX_NEW))
    session.ask("red " * 200)
    with pytest.raises(ChatError, match="/reset starts a new conversation"):
        session.ask("blue " * 300)
    assert len(session.turns) == 2  # the failed turn left the conversation as it was
    session.reset()
    assert session.ask("blue " * 300) is not None


# ---------------------------------------------------------------- streaming

class Recorder(BaseStreamer):
    def __init__(self):
        self.puts = []
        self.ended = False

    def put(self, value):
        assert not self.ended
        self.puts.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


def test_streamers_receive_tokens_one_at_a_time(ours, native_export, files):
    for backend in (ours, load_backend(native_export)):
        session = ChatSession(backend, GenerationSettings(MAX_NEW))
        session.attach_image(files["red"])
        prompt = session.build_prompt("What is shown?")
        rec = Recorder()
        new = backend.generate(prompt, MAX_NEW, streamer=rec, do_sample=False)
        assert rec.ended
        steps = rec.puts[1:]  # the first put is the prompt (empty for ours: it generates from embeddings)
        assert len(steps) == len(new) > 1 and all(len(s) == 1 for s in steps)
        assert [s[0] for s in steps] == new

        out = io.StringIO()
        printer = StreamPrinter(backend.tokenizer, out)
        answer = session.ask("What is shown?", streamer=printer)
        assert answer and printer.chunks
        assert "".join(printer.chunks).rstrip() == answer and out.getvalue().endswith("\n")


# ---------------------------------------------------------------- exported checkpoints

def test_native_export_chats_like_the_source(files, ours, native_export, capsys):
    backend = load_backend(native_export)
    assert isinstance(backend, TransformersBackend) and backend.accepts_images
    for args in (["--image", files["red"]], ["--image", files["red"], files["blue"]]):
        ours_out = chat(["--model", files["ckpt"], *args, "--prompt", "What is shown?", *GEN], capsys)
        theirs = chat(["--model", native_export, *args, "--prompt", "What is shown?", *GEN], capsys)
        assert theirs[0] == 0 and theirs[1] == ours_out[1] and theirs[1].strip()
    # a conversation: both sides render the same text and give the same answers turn by turn
    a, b = ChatSession(ours, GenerationSettings(MAX_NEW)), ChatSession(backend, GenerationSettings(MAX_NEW))
    for s in (a, b):
        s.attach_image(files["blue"])
    assert a.ask("What is shown?") == b.ask("What is shown?")
    for s in (a, b):
        s.attach_image(files["red"])
    assert a.ask("And here?") == b.ask("And here?")
    assert a.last_prompt.text == b.last_prompt.text
    assert torch.equal(a.last_prompt.input_ids, b.last_prompt.input_ids)
    # --system replaces the template's default system prompt on both sides
    a, b = (ChatSession(x, GenerationSettings(MAX_NEW), system="Answer in one word.") for x in (ours, backend))
    assert a.ask("Hi?") == b.ask("Hi?")
    assert a.last_prompt.text == b.last_prompt.text == "<s>Answer in one word. USER: Hi? ASSISTANT:"


def test_remote_code_export_needs_trust_remote_code(files, remote_export, capsys):
    with open(os.path.join(remote_export, "config.json")) as f:
        assert "auto_map" in json.load(f)
    args = ["--image", files["red"], "--prompt", "What is shown?", *GEN]
    code, out, err = chat(["--model", remote_export, *args], capsys)
    assert code == 2 and out == "" and "--trust-remote-code" in err
    ours_out = chat(["--model", files["ckpt"], *args], capsys)[1]
    code, out, err = chat(["--model", remote_export, "--trust-remote-code", *args], capsys)
    assert code == 0, err
    assert out == ours_out


def test_text_only_model_refuses_images_and_still_chats(model, files):
    path = str(files["root"] / "text_only")
    tok = model.tokenizer
    before, tok.chat_template = tok.chat_template, get_template("vicuna_v1").jinja()
    try:
        model.llm.save_pretrained(path)
        tok.save_pretrained(path)
    finally:
        tok.chat_template = before
    backend = load_backend(path)
    assert not backend.accepts_images
    session = ChatSession(backend, GenerationSettings(MAX_NEW))
    out, err = io.StringIO(), io.StringIO()
    run_interactive(session, io.StringIO(f"/image {files['red']}\nHello?\n"), out, err)
    assert "takes no images" in err.getvalue() and "text-only" in err.getvalue()
    # the same LLM inside our model answers a text-only turn the same way
    ref = ChatSession(MllmBackend(model), GenerationSettings(MAX_NEW)).ask("Hello?")
    assert out.getvalue() == ref + "\n"


def test_chatml_end_of_turn_stops_both_backends(files, capsys):
    """The export's generation_config names only EOS; the chat still stops at ChatML's <|im_end|>."""
    from mllm.tokenizer import train_tiny_tokenizer

    tok = train_tiny_tokenizer(extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    cfg = tiny_config(anyres=False)
    cfg.chat_template = "chatml"
    torch.manual_seed(1)
    model = MultimodalLM.build(cfg, tokenizer=tok).eval()
    ckpt, out = str(files["root"] / "chatml_ckpt"), str(files["root"] / "chatml_hf")
    model.save_pretrained(ckpt)
    export_model(ckpt, out, log=None)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    backends = [load_backend(ckpt), load_backend(out)]
    for backend in backends:
        assert im_end in backend.stop_ids and tok.eos_token_id in backend.stop_ids
        words = tok.encode(" red circle", add_special_tokens=False)
        assert backend.decode(words + [im_end] + words) == "red circle"  # cut at the end of the turn
    sessions = [ChatSession(b, GenerationSettings(MAX_NEW)) for b in backends]
    for s in sessions:
        s.attach_image(files["blue"])
    assert sessions[0].ask("What is shown?") == sessions[1].ask("What is shown?")
    assert sessions[0].last_prompt.text == sessions[1].last_prompt.text
    assert sessions[0].last_prompt.text.endswith("<|im_start|>user\n<image>\nWhat is shown?<|im_end|>\n"
                                                 "<|im_start|>assistant\n")


@pytest.mark.gpu
def test_cuda_bf16_one_shot(files, native_export, capsys):
    for path in (files["ckpt"], native_export):
        code, out, err = chat(["--model", path, "--image", files["red"], "--prompt", "What is shown?", "--device",
                               "cuda", "--bf16", *GEN], capsys)
        assert code == 0, err
        assert out.strip()
