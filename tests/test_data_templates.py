"""Chat templates: exact strings for a two-turn conversation, and HF apply_chat_template agreement."""
from __future__ import annotations

import pytest

from data_pipelines.templates import TEMPLATES, get_template

MESSAGES = [
    {"role": "user", "content": "<image>\nWhat is it?"},
    {"role": "assistant", "content": "A red star."},
    {"role": "user", "content": "How big?"},
    {"role": "assistant", "content": "Small."},
]
# the same conversation as HF multimodal processors write it
PARTS = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red star."}]},
    {"role": "user", "content": [{"type": "text", "text": "How big?"}]},
    {"role": "assistant", "content": "Small."},
]
LLAVA_SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
             "helpful, detailed, and polite answers to the user's questions.")

EXPECTED = {
    "plain": "<s><image>A red star.</s>Small.</s>",
    "vicuna_v1": (f"<s>{LLAVA_SYS} USER: <image>\nWhat is it? ASSISTANT: A red star.</s>"
                  "USER: How big? ASSISTANT: Small.</s>"),
    "vicuna_v1_short": "<s> USER: <image>\nWhat is it? ASSISTANT: A red star.</s>USER: How big? ASSISTANT: Small.</s>",
    "llama3": ("<s><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nA red star.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHow big?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nSmall.<|eot_id|>"),
    "chatml": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
               "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA red star.<|im_end|>\n"
               "<|im_start|>user\nHow big?<|im_end|>\n<|im_start|>assistant\nSmall.<|im_end|>\n"),
}
TARGETS = {
    "plain": ["A red star.</s>", "Small.</s>"],
    "vicuna_v1": [" A red star.</s>", " Small.</s>"],
    "vicuna_v1_short": [" A red star.</s>", " Small.</s>"],
    "llama3": ["A red star.<|eot_id|>", "Small.<|eot_id|>"],
    "chatml": ["A red star.<|im_end|>", "Small.<|im_end|>"],
}
GENERATION = {
    "plain": "<s><image>",
    "vicuna_v1": f"<s>{LLAVA_SYS} USER: <image>\nWhat is it? ASSISTANT:",
    "vicuna_v1_short": "<s> USER: <image>\nWhat is it? ASSISTANT:",
    "llama3": ("<s><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "chatml": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat is it?"
               "<|im_end|>\n<|im_start|>assistant\n"),
}
TOKENS = dict(bos_token="<s>", eos_token="</s>")


def test_registry_is_exact():
    assert TEMPLATES.keys() == ["chatml", "llama3", "plain", "vicuna_v1", "vicuna_v1_short"]
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'.*known: chatml, llama3, plain, vicuna_v1, "
                                         "vicuna_v1_short"):
        get_template("vicuna")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_two_turn_string_and_targets(name):
    tpl = get_template(name)
    assert tpl.text(MESSAGES, **TOKENS) == EXPECTED[name]
    segs = tpl.render(MESSAGES, **TOKENS)
    assert "".join(s.text for s in segs if s.target) == "".join(TARGETS[name])
    assert "".join(s.text for s in segs) == EXPECTED[name]
    assert tpl.generation_prompt(MESSAGES[:1], **TOKENS) == GENERATION[name]
    # list-of-parts content renders like the marker string
    assert tpl.text(PARTS, **TOKENS) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_jinja_matches_hf_apply_chat_template(name, tiny_tokenizer):
    tpl = get_template(name)
    jinja = tpl.jinja()
    for msgs in (MESSAGES, PARTS):
        assert tiny_tokenizer.apply_chat_template(msgs, chat_template=jinja, tokenize=False) == EXPECTED[name]
        assert tiny_tokenizer.apply_chat_template(msgs[:1], chat_template=jinja, tokenize=False,
                                                  add_generation_prompt=True) == GENERATION[name]
    system = [{"role": "system", "content": "Be brief."}] + MESSAGES
    assert tiny_tokenizer.apply_chat_template(system, chat_template=jinja, tokenize=False) == \
        tpl.text(system, **TOKENS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_jinja_generation_blocks_mark_the_targets(name, tiny_tokenizer):
    """HF's return_assistant_tokens_mask (from {% generation %}) covers exactly our target text."""
    tpl = get_template(name)
    out = tiny_tokenizer.apply_chat_template(MESSAGES, chat_template=tpl.jinja(), tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    marked = tiny_tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert marked == "".join(TARGETS[name])


def test_system_override_and_roles():
    tpl = get_template("vicuna_v1", system="Be brief.")
    assert tpl.text(MESSAGES[:2], **TOKENS) == "<s>Be brief. USER: <image>\nWhat is it? ASSISTANT: A red star.</s>"
    chatml = get_template("chatml")
    with_sys = [{"role": "system", "content": "S."}] + MESSAGES[:2]
    assert chatml.text(with_sys).startswith("<|im_start|>system\nS.<|im_end|>\n<|im_start|>user\n")
    with pytest.raises(ValueError, match="message 1: a system message may only come first"):
        chatml.text([MESSAGES[0], {"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match="unknown role 'bot'"):
        chatml.text([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="already ends with an assistant turn"):
        chatml.generation_prompt(MESSAGES)
    assert get_template("llama3").end_of_turn("</s>") == "<|eot_id|>"
    assert get_template("chatml").end_of_turn("</s>") == "<|im_end|>"
    assert get_template("vicuna_v1").end_of_turn("</s>") == "</s>"
