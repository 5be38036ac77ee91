"""Conversation -> token ids and labels: segment by segment, images expanded, truncated safely.

    enc = encode_conversation(record.messages, template, tokenizer, image_token_counts=[576, 2144],
                              max_length=2048, verify=True)
    enc.input_ids, enc.labels            # lists of ints; labels -100 except assistant content + end of turn

How: the template renders segments (text, is_target); all segments are tokenised in one tokenizer call
without special-token insertion (BOS/EOS are in the text where the template wants them); a target
segment keeps its ids as labels, others get -100. Each ``<image>`` (one added special token) is then
expanded to that image's ``geometry.num_image_tokens(hw)`` copies, labelled -100.

    ids = encode_prompt(messages[:-1], template, tokenizer, image_token_counts=[576])  # generation prompt
    stops = stop_token_ids(tokenizer, template.end_of_turn(tokenizer.eos_token))   # when an answer ends

Training samples (``encode_conversation``) and generation prompts (``encode_prompt``, for chat, eval,
export verification and the benchmarks) share every step below, so a prompt is tokenised exactly as the
prompt part of a training sample. ``data_pipelines.processor.MultimodalProcessor`` is their one caller.

Checks, each a clear error:
- ``verify=True`` (the pre-flight): the ids decode back to exactly the rendered text, else
  ``TokenizationMismatch`` (LLaVA's "tokenization mismatch", which it only printed before training on
  all-masked labels).
- a sample without any target token raises ``AllMaskedError`` (a template bug; never silently zero loss).
- over ``max_length``: when the last image token lies beyond ``max_length`` the sample cannot be cut
  without cutting an image, and ``RecordError("too_long")`` is raised for the dataset to skip and count;
  otherwise the text is cut at the end (also ``too_long`` if that cut removes every target token).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from data_pipelines.records import IMAGE_MARKER, RecordError
from data_pipelines.templates.base import ChatTemplate, Segment

IGNORE_INDEX = -100


class TokenizationMismatch(ValueError):
    """The segment-wise token ids do not decode to the rendered text."""


class AllMaskedError(ValueError):
    """A sample has no target token: it would train on zero loss."""


@dataclass
class Encoded:
    input_ids: List[int]
    labels: List[int]
    num_images: int
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


def image_token_id(tokenizer: Any, image_token: str = IMAGE_MARKER) -> int:
    """The id of ``image_token``; an error when the tokenizer does not hold it as one special token."""
    ids = tokenizer.encode(image_token, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer does not encode {image_token!r} as one token (got {ids}); add it with "
                         f"mllm.tokenizer.ensure_image_token(tokenizer, {image_token!r})")
    return ids[0]


def encode_segments(segments: Sequence[Segment], tokenizer: Any) -> Tuple[List[int], List[int]]:
    """Segments -> (ids, labels), one id per image marker (not yet expanded)."""
    if not segments:
        return [], []
    batch = tokenizer([s.text for s in segments], add_special_tokens=False)["input_ids"]
    ids: List[int] = []
    labels: List[int] = []
    for seg, seg_ids in zip(segments, batch):
        ids += seg_ids
        labels += seg_ids if seg.target else [IGNORE_INDEX] * len(seg_ids)
    return ids, labels


def check_roundtrip(ids: Sequence[int], text: str, tokenizer: Any, where: str = "sample") -> None:
    decoded = tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if decoded == text:
        return
    i = next((k for k, (a, b) in enumerate(zip(decoded, text)) if a != b), min(len(decoded), len(text)))
    raise TokenizationMismatch(
        f"{where}: the token ids do not decode to the rendered text (first difference at character {i}: "
        f"rendered {text[max(0, i - 30):i + 30]!r} vs decoded {decoded[max(0, i - 30):i + 30]!r}). The "
        f"tokenizer changes text when segments are tokenised separately (a normaliser, or a prefix space "
        f"added to each piece); labels would not line up with the text. Use a tokenizer that round-trips "
        f"(byte-level BPE) or a template whose segment boundaries fall where the tokenizer splits anyway.")


def expand_images(ids: Sequence[int], labels: Sequence[int], image_id: int,
                  counts: Sequence[int]) -> Tuple[List[int], List[int]]:
    """Replace the k-th image id by ``counts[k]`` copies (labels -100)."""
    found = sum(1 for t in ids if t == image_id)
    if found != len(counts):
        raise ValueError(f"{found} image token(s) in the text but {len(counts)} image(s)")
    out_ids: List[int] = []
    out_labels: List[int] = []
    k = 0
    for t, lab in zip(ids, labels):
        if t == image_id:
            out_ids += [image_id] * counts[k]
            out_labels += [IGNORE_INDEX] * counts[k]
            k += 1
        else:
            out_ids.append(t)
            out_labels.append(lab)
    return out_ids, out_labels


def truncate(ids: List[int], labels: List[int], max_length: int, image_id: int) -> Tuple[List[int], List[int], bool]:
    """Cut text at the end; never through an image (``RecordError("too_long")`` instead)."""
    if len(ids) <= max_length:
        return ids, labels, False
    last_image = max((i for i, t in enumerate(ids) if t == image_id), default=-1)
    if last_image >= max_length:
        raise RecordError("too_long", f"{len(ids)} tokens and the image tokens end at position {last_image + 1}, "
                          f"past max_length={max_length}; an image cannot be cut", field="images")
    ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise RecordError("too_long", f"{len(ids)} tokens cut to max_length={max_length} leave no target token",
                          field="messages")
    return ids, labels, True


def encode_prompt(messages: Sequence[Dict[str, Any]], template: ChatTemplate, tokenizer: Any,
                  image_token_counts: Sequence[int] = (), *, image_token: str = IMAGE_MARKER,
                  add_generation_prompt: bool = True) -> List[int]:
    """Token ids of the prompt for the next assistant turn after ``messages``, built as a training sample
    is: segment-wise tokenisation of the template's rendering, each ``<image>`` expanded to
    ``image_token_counts[k]`` ids (a count mismatch is a ValueError)."""
    segments = template.render(messages, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                               add_generation_prompt=add_generation_prompt)
    ids, labels = encode_segments(segments, tokenizer)
    if image_token_counts or image_token in "".join(s.text for s in segments):
        ids, _ = expand_images(ids, labels, image_token_id(tokenizer, image_token), image_token_counts)
    return ids


def stop_token_ids(tokenizer: Any, end_of_turn: str = "", extra: Sequence[int] = ()) -> List[int]:
    """EOS, the template's end-of-turn token when it is one token of its own (``<|im_end|>``), and ``extra``."""
    stops = [int(i) for i in extra]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.insert(0, tokenizer.eos_token_id)
    if end_of_turn:
        ids = tokenizer.encode(end_of_turn, add_special_tokens=False)
        if len(ids) == 1 and ids[0] not in stops:
            stops.append(ids[0])
    if not stops:
        raise ValueError("the tokenizer has no EOS token and the chat template no single end-of-turn token: "
                         "an answer would never stop before --max-new-tokens")
    return stops


def encode_conversation(messages: Sequence[Dict[str, Any]], template: ChatTemplate, tokenizer: Any,
                        image_token_counts: Sequence[int] = (), *, max_length: Optional[int] = None,
                        image_token: str = IMAGE_MARKER, verify: bool = False, where: str = "sample") -> Encoded:
    """See the module docstring. ``image_token_counts[k]`` is the token count of the k-th image."""
    image_id = image_token_id(tokenizer, image_token)
    segments = template.render(messages, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
    ids, labels = encode_segments(segments, tokenizer)
    if verify:
        check_roundtrip(ids, "".join(s.text for s in segments), tokenizer, where)
    if all(lab == IGNORE_INDEX for lab in labels):
        raise AllMaskedError(f"{where}: no token has a label (template {template.name!r} marked nothing as "
                             f"target); training on it would give zero loss")
    ids, labels = expand_images(ids, labels, image_id, image_token_counts)
    truncated = False
    if max_length is not None:
        ids, labels, truncated = truncate(ids, labels, max_length, image_id)
    return Encoded(ids, labels, len(image_token_counts), truncated)
