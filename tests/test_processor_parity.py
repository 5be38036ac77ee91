"""One conversation, the same ids and pixels on every path: training, chat, eval and the exported processor.

    .venv/bin/python -m pytest -q tests/test_processor_parity.py

For each tokenizer family (the tiny byte-level BPE; a Llama-2-style SentencePiece-like tokenizer and a
Llama-3-style one, both adding BOS by default; a Qwen2-style ChatML one without BOS; see
``tests/_tokenizers.py``) and each chat template it is used with, a tiny model is built on that tokenizer
and one image + question goes through:

- training: ``MultimodalProcessor.encode_sample`` of the record with its answer, cut before the first
  target token (the prompt part of the sample);
- chat: ``MllmBackend.encode`` (what ``mllm chat`` runs);
- eval: ``BatchGenerator.encode`` of the benchmark question (what ``mllm eval`` runs);
- the export: the exported chat template rendered by transformers' ``apply_chat_template``, then the
  exported ``AutoProcessor`` called with its DEFAULT settings (``processor(text=..., images=...)``), the
  way lmms-eval and most user code call it. A tokenizer that adds BOS on top of the template's BOS would
  give two BOS here (the duplicate-BOS bug); the export makes render-then-tokenise give the training ids.

The export's ``generation_config.json`` must stop where our chat and eval stop: EOS and the template's
end-of-turn token (ChatML ``<|im_end|>``, Llama-3 ``<|eot_id|>``).
"""
from __future__ import annotations

import json
import os

import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from data_pipelines.processor import MultimodalProcessor
from data_pipelines.records import Record
from data_pipelines.tokenize import TokenizationMismatch, check_roundtrip, encode_segments
from eval.generate import BatchGenerator, Question
from mllm.app.chat import MllmBackend
from mllm.app.export import export_model
from mllm.model import MultimodalLM
from mllm.tokenizer import train_tiny_tokenizer
from tests._tiny import tiny_config
from tests._tokenizers import llama2_tokenizer, llama3_tokenizer, qwen2_tokenizer

QUESTION = "What colour is the shape?"
ANSWER = "The shape is red."
CASES = [  # (tokenizer family, chat template)
    ("tiny", "vicuna_v1"), ("tiny", "chatml"),
    ("llama2", "vicuna_v1"), ("llama2", "plain"),
    ("llama3", "llama3"),
    ("qwen2", "chatml"),
]
BUILD = {"tiny": train_tiny_tokenizer, "llama2": llama2_tokenizer, "llama3": llama3_tokenizer,
         "qwen2": qwen2_tokenizer}
PIL_BACKEND = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}


def _image() -> Image.Image:
    img = Image.new("RGB", (70, 41), (20, 20, 200))  # non-square: AnyRes picks a 2-tile canvas and pads
    img.paste((220, 30, 30), (10, 8, 40, 30))
    return img


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{case: (model, export dir)}, each model on its own tokenizer, exported natively (LlavaNext)."""
    out = {}
    for family, template in CASES:
        torch.manual_seed(0)
        cfg = tiny_config(anyres=True)
        cfg.chat_template = template
        model = MultimodalLM.build(cfg, tokenizer=BUILD[family]()).eval()
        export_dir = str(tmp_path_factory.mktemp(f"export_{family}_{template}"))
        export_model(model, export_dir, log=None)
        out[(family, template)] = (model, export_dir)
    return out


def _messages():
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]


def test_the_families_differ_where_it_matters():
    # the bug class needs tokenizers that add BOS by default next to one that does not
    for build, bos in ((llama2_tokenizer, "<s>"), (llama3_tokenizer, "<|begin_of_text|>")):
        tok = build()
        assert tok("a red circle")["input_ids"][0] == tok.convert_tokens_to_ids(bos)
    qwen = qwen2_tokenizer()
    assert qwen.bos_token is None and qwen("a")["input_ids"] == qwen("a", add_special_tokens=False)["input_ids"]
    # SentencePiece-like: a word-initial marker, unlike byte-level BPE
    assert llama2_tokenizer().convert_ids_to_tokens(llama2_tokenizer()("red")["input_ids"])[1].startswith("▁")


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_training_chat_eval_and_export_agree(built, case):
    model, export_dir = built[case]
    image = _image()
    proc = MultimodalProcessor.for_model(model)

    # training: the record with its answer; the prompt part is everything before the first target token
    record = Record("r0", [{"role": "user", "content": "<image>\n" + QUESTION},
                           {"role": "assistant", "content": ANSWER}], images=[image])
    sample = proc.encode_sample(record)
    first_target = int((sample["labels"] != -100).nonzero()[0])
    train_ids = sample["input_ids"][:first_target].tolist()
    train_pixels = sample["pixel_values"][0]  # (T, 3, S, S)

    chat = MllmBackend(model).encode(_messages(), [image])
    assert chat.input_ids[0].tolist() == train_ids
    assert torch.equal(chat.model_inputs["pixel_values"][0, :train_pixels.shape[0]], train_pixels)

    gen = BatchGenerator(model, max_new_tokens=4)
    (encoded,) = gen.encode([Question(0, "<image>\n" + QUESTION, [image])])
    assert encoded.error is None and encoded.ids == train_ids
    eval_pixels = gen.processor.images(encoded.images)["pixel_values"][0]
    assert torch.equal(eval_pixels[:train_pixels.shape[0]], train_pixels)

    # the export, as other tools use it: render with its template, tokenise with default settings
    hf = AutoProcessor.from_pretrained(export_dir, **PIL_BACKEND)
    text = hf.apply_chat_template(_messages(), add_generation_prompt=True, tokenize=False)
    assert text == proc.render(_messages())
    theirs = hf(text=text, images=[image], return_tensors="pt")
    assert theirs["input_ids"][0].tolist() == train_ids
    tok = model.tokenizer
    if tok.bos_token is not None and case[1] != "chatml":
        assert theirs["input_ids"][0].tolist().count(tok.bos_token_id) == 1  # never a second BOS
    their_pixels = theirs["pixel_values"][0]
    assert their_pixels.shape[0] >= train_pixels.shape[0]
    assert (their_pixels[:train_pixels.shape[0]] - train_pixels).abs().max().item() == 0.0


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_exported_tokenizer_with_defaults_gives_the_training_ids(built, case):
    """Text-only: the tokenizer's own ``apply_chat_template(tokenize=True)`` (what vLLM and transformers'
    pipelines call) and render-then-``tokenizer(text)`` both give our prompt ids."""
    model, export_dir = built[case]
    proc = MultimodalProcessor.for_model(model)
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER},
                {"role": "user", "content": "And its size?"}]
    segments = proc.template.render(messages, bos_token=model.tokenizer.bos_token,
                                    eos_token=model.tokenizer.eos_token, add_generation_prompt=True)
    ids, _ = encode_segments(segments, model.tokenizer)
    if case[0] == "llama2":
        # a SentencePiece-like tokenizer puts a word marker at the start of every separately tokenised
        # segment, so a multi-turn conversation is not the text tokenised in one piece: training's
        # preflight refuses it (TokenizationMismatch) rather than train on it; the single-turn prompt,
        # one segment, must still agree
        with pytest.raises(TokenizationMismatch):
            check_roundtrip(ids, "".join(s.text for s in segments), model.tokenizer)
        messages = messages[:1]
    ours = proc.encode_prompt(messages).input_ids
    tok = AutoTokenizer.from_pretrained(export_dir)
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == proc.render(messages)
    assert tok(text)["input_ids"] == ours
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(rendered["input_ids"]) == ours


@pytest.mark.parametrize("case,stop", [(("qwen2", "chatml"), "<|im_end|>"), (("llama3", "llama3"), "<|eot_id|>"),
                                       (("llama2", "vicuna_v1"), None)])
def test_generation_config_lists_every_end_of_turn_id(built, case, stop):
    model, export_dir = built[case]
    with open(os.path.join(export_dir, "generation_config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    tok = model.tokenizer
    expected = [tok.eos_token_id] + ([tok.convert_tokens_to_ids(stop)] if stop else [])
    assert eos == expected == MultimodalProcessor.for_model(model).stop_ids
    assert transformers.GenerationConfig.from_pretrained(export_dir).eos_token_id == (eos if stop else eos[0])


def test_processor_round_trips_through_a_checkpoint(built, tmp_path):
    model, _ = built[("qwen2", "chatml")]
    proc = MultimodalProcessor.for_model(model)
    proc.save_pretrained(str(tmp_path))
    again = MultimodalProcessor.from_pretrained(str(tmp_path))
    assert again.to_dict() == proc.to_dict()
    image = _image()
    a, b = proc.encode_prompt(_messages(), [image]), again.encode_prompt(_messages(), [image])
    assert a.input_ids == b.input_ids and torch.equal(a.pixel_values, b.pixel_values)
    assert again.stop_ids == proc.stop_ids
