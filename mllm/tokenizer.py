"""Tokenizers: any HF tokenizer by hub id / local dir, or the ``tiny`` byte-level BPE trained in-process.

    tok = load_tokenizer("tiny")                  # trained here, deterministic, ~1k vocab, no download
    tok = load_tokenizer("/path/to/checkpoint")   # AutoTokenizer, never trusting remote code by default
    ensure_image_token(tok, "<image>")            # a real added special token

The tiny tokenizer is byte-level, so it encodes any text; its merges come from a built-in corpus that
covers the Shapes world's words and the benchmark prompt phrases, so those are short in tokens.
"""
from __future__ import annotations

import itertools
import os
from typing import Iterable, List, Optional

from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .constants import IMAGE_TOKEN

TINY_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
TINY_VOCAB_SIZE = 1024

_COLOURS = "red green blue yellow purple orange white black gray grey pink brown cyan".split()
_SHAPES = "circle circles square squares triangle triangles star stars cross crosses shape shapes".split()
_WORDS = """
a an the is are of and or in on at to with there what which how many where who this that these those
image picture photo shown show shows left right top bottom center centre middle upper lower corner
above below next beside between larger smaller bigger big small large tiny same different more less
than color colour colours colors size position count number letter letters word text written label
yes no true false one two three four five six seven eight nine ten zero none first second third
describe description briefly please answer question questions options option correct select from
above following given choices directly single phrase using hint image answer with the option's letter
user assistant system human gpt you are helpful a chat between curious and an artificial intelligence
gives detailed polite answers to user's questions it they them its has have contains containing
background drawn each all both only also other another object objects kind type
""".split()
_PROMPTS = [
    "Please select the correct answer from the options above. \n",
    "Answer with the option's letter from the given choices directly.",
    "Answer the question using a single word or phrase.",
    "Hint: ", "Question: ", "Options:\n", "A. ", "B. ", "C. ", "D. ", "(A) ", "(B) ", "(C) ", "(D) ",
    "USER: ", " ASSISTANT: ", "<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n",
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
]


def tiny_corpus() -> List[str]:
    """A deterministic corpus for the tiny tokenizer's merges."""
    lines: List[str] = list(_PROMPTS)
    vocab = _COLOURS + _SHAPES + _WORDS
    for w in vocab:
        lines += [w, " " + w, w.capitalize(), w + ".", w + "?"]
    for c, s in itertools.product(_COLOURS, _SHAPES):
        lines.append(f"a {c} {s}. The {s} is {c}.")
    for i in range(0, 101):
        lines.append(f"{i} {i}. ({i})")
    lines.append("ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 .,;:!?'\"()[]{}<>-_/\\\n\t")
    return lines


def train_tiny_tokenizer(corpus: Optional[Iterable[str]] = None, vocab_size: int = TINY_VOCAB_SIZE,
                         extra_special_tokens: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE in-process and wrap it as a normal transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = list(TINY_SPECIAL_TOKENS.values()) + [t for t in extra_special_tokens]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus if corpus is not None else tiny_corpus()), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                  model_input_names=["input_ids", "attention_mask"],
                                  **TINY_SPECIAL_TOKENS)
    tok.padding_side = "right"
    return tok


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    if name_or_path == "tiny":
        return train_tiny_tokenizer()
    kwargs = {}
    if os.path.exists(os.path.join(name_or_path, "mllm_config.json")):
        # our checkpoint's config.json describes the multimodal model, not a tokenizer: don't consult it
        kwargs["config"] = PretrainedConfig()
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as e:
        raise ValueError(f"cannot load a tokenizer from {name_or_path!r} (a hub id needs network or a local "
                         f"copy; a directory needs tokenizer files): {e}") from None
    if tok.pad_token is None:
        # decoder-only tokenizers often lack one; padding positions are masked out anyway
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def ensure_image_token(tok: PreTrainedTokenizerBase, image_token: str = IMAGE_TOKEN) -> int:
    """Add ``image_token`` as a special token when missing; return its id."""
    if image_token not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [image_token]},
                               replace_extra_special_tokens=False)
    ids = tok.convert_tokens_to_ids(image_token)
    if tok.encode(image_token, add_special_tokens=False) != [ids]:
        raise ValueError(f"tokenizer does not encode {image_token!r} as one token")
    return ids
