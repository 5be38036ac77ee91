"""Tokenisation: label masking, image token expansion, truncation, and the round-trip / all-masked checks."""
from __future__ import annotations

import pytest
from tokenizers import normalizers

from data_pipelines.records import RecordError
from data_pipelines.templates import get_template
from data_pipelines.templates.base import ChatTemplate, Segment
from data_pipelines.tokenize import (IGNORE_INDEX, AllMaskedError, TokenizationMismatch, encode_conversation,
                                     image_token_id)
from mllm.geometry import ImageGeometry
from mllm.tokenizer import ensure_image_token, train_tiny_tokenizer

GEOMETRY = ImageGeometry(tile_size=32, patch_size=8, has_cls=True, select_strategy="default",
                         grid_pinpoints=((32, 64), (64, 32), (64, 64)), image_newline=True)
MESSAGES = [
    {"role": "user", "content": "<image>\nWhat is it?"},
    {"role": "assistant", "content": "A red star."},
    {"role": "user", "content": "How big?"},
    {"role": "assistant", "content": "Small."},
]
TARGET_TEXT = {"plain": "A red star.</s>Small.</s>", "vicuna_v1": " A red star.</s> Small.</s>",
               "llama3": "A red star.<|eot_id|>Small.<|eot_id|>", "chatml": "A red star.<|im_end|>Small.<|im_end|>"}


@pytest.fixture(scope="module")
def tok():
    t = train_tiny_tokenizer()
    ensure_image_token(t)
    return t


@pytest.mark.parametrize("name", sorted(TARGET_TEXT))
def test_only_assistant_tokens_and_end_of_turn_have_labels(tok, name):
    tpl = get_template(name)
    enc = encode_conversation(MESSAGES, tpl, tok, [36], verify=True)
    ids, labels = enc.input_ids, enc.labels
    assert len(ids) == len(labels)
    target_ids = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ids, labels))  # a label is the token itself or -100
    assert tok.decode(target_ids) == TARGET_TEXT[name]
    # every other token, image tokens collapsed back to one marker, is the rest of the rendered text
    context = [t for k, (t, lab) in enumerate(zip(ids, labels)) if lab == IGNORE_INDEX
               and not (t == image_token_id(tok) and k > 0 and ids[k - 1] == t)]
    segments = tpl.render(MESSAGES, bos_token="<s>", eos_token="</s>")
    assert tok.decode(context) == "".join(s.text for s in segments if not s.target)
    assert sum(1 for t in ids if t == image_token_id(tok)) == 36


def test_vicuna_labels_exact_positions(tok):
    enc = encode_conversation(MESSAGES[:2], get_template("vicuna_v1"), tok, [36])
    answer = tok(" A red star.</s>", add_special_tokens=False)["input_ids"]
    assert enc.input_ids[-len(answer):] == answer
    assert enc.labels == [IGNORE_INDEX] * (len(enc.labels) - len(answer)) + answer
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[-1] == tok.eos_token_id


def test_image_token_expansion_counts_per_size(tok):
    # by hand for the tiny geometry (tile 32, patch 8 -> 4x4 grid, newline after each row):
    # 32x32 -> pinpoint 32x64, 16 base + 4x4 unpadded + 4 newlines = 36; 64x64 -> 2x2 tiles, 16 + 8x8 + 8 = 88
    assert GEOMETRY.num_image_tokens((32, 32)) == 36 and GEOMETRY.num_image_tokens((64, 64)) == 88
    sizes = [(32, 32), (64, 64), (48, 100), (100, 48), (20, 200)]
    counts = [GEOMETRY.num_image_tokens(hw) for hw in sizes]
    assert len(set(counts)) == len(counts)  # distinct, so a mix-up between images would show
    msgs = [{"role": "user", "content": "Look: <image> then <image>, <image>; <image> and <image>."},
            {"role": "assistant", "content": "Five."}]
    enc = encode_conversation(msgs, get_template("chatml"), tok, counts)
    image_id = image_token_id(tok)
    runs, n = [], 0
    for t in enc.input_ids + [-1]:
        if t == image_id:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    assert runs == counts
    assert all(lab == IGNORE_INDEX for t, lab in zip(enc.input_ids, enc.labels) if t == image_id)
    with pytest.raises(ValueError, match="5 image token\\(s\\) in the text but 4 image\\(s\\)"):
        encode_conversation(msgs, get_template("chatml"), tok, counts[:4])


def test_text_overflow_is_truncated_at_the_end(tok):
    long = [{"role": "user", "content": "Tell me."}, {"role": "assistant", "content": "red " * 200}]
    full = encode_conversation(long, get_template("vicuna_v1"), tok)
    enc = encode_conversation(long, get_template("vicuna_v1"), tok, max_length=100)
    assert enc.truncated and len(enc) == 100
    assert enc.input_ids == full.input_ids[:100] and enc.labels == full.labels[:100]
    assert not encode_conversation(long, get_template("vicuna_v1"), tok, max_length=len(full)).truncated


def test_images_are_never_cut(tok):
    msgs = [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "dots " * 50}]
    tpl = get_template("vicuna_v1")
    prefix = len(tok(tpl.text(msgs[:1], bos_token="<s>").split("<image>")[0], add_special_tokens=False)["input_ids"])
    image_end = prefix + 88
    # the image fits: the answer is cut, the image is whole
    enc = encode_conversation(msgs, tpl, tok, [88], max_length=image_end + 20)
    assert enc.truncated and enc.input_ids.count(image_token_id(tok)) == 88
    # the image does not fit: dropped as too_long, never cut
    with pytest.raises(RecordError, match="an image cannot be cut") as e:
        encode_conversation(msgs, tpl, tok, [88], max_length=image_end - 1)
    assert e.value.reason == "too_long"
    # the image fits but nothing of the answer would remain: also too_long
    with pytest.raises(RecordError, match="leave no target token") as e:
        encode_conversation(msgs, tpl, tok, [88], max_length=image_end + 3)
    assert e.value.reason == "too_long"


def test_roundtrip_mismatch_is_an_error():
    lossy = train_tiny_tokenizer()
    ensure_image_token(lossy)
    lossy.backend_tokenizer.normalizer = normalizers.Lowercase()  # changes the text it encodes
    with pytest.raises(TokenizationMismatch, match="rec-7: the token ids do not decode to the rendered text"):
        encode_conversation(MESSAGES, get_template("vicuna_v1"), lossy, [36], verify=True, where="rec-7")
    # without verify the (wrong) ids come out: that is what the pre-flight is for
    encode_conversation(MESSAGES, get_template("vicuna_v1"), lossy, [36])


class _NoTargets(ChatTemplate):
    name = "broken"

    def _render(self, system, turns, bos, eos, add_generation_prompt):
        return [Segment(bos + "".join(c for _, c in turns) + eos)]


def test_all_masked_sample_is_an_error(tok):
    with pytest.raises(AllMaskedError, match="rec-9: no token has a label .*'broken'"):
        encode_conversation(MESSAGES, _NoTargets(), tok, [36], where="rec-9")


def test_missing_image_token_is_a_clear_error():
    plain = train_tiny_tokenizer()  # no <image> added
    with pytest.raises(ValueError, match="does not encode '<image>' as one token.*ensure_image_token"):
        encode_conversation(MESSAGES, get_template("plain"), plain, [36])
