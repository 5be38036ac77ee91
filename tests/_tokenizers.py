"""Tokenizers of the three families real checkpoints ship, built offline with the ``tokenizers`` library.

    tok = llama2_tokenizer()   # SentencePiece-like (Metaspace "▁", byte fallback), adds <s> by default
    tok = llama3_tokenizer()   # byte-level BPE, adds <|begin_of_text|> by default, <|eot_id|> ends a turn
    tok = qwen2_tokenizer()    # byte-level BPE, no BOS, <|im_start|> / <|im_end|>, EOS <|endoftext|>

Each is trained in-process on the tiny corpus (so Shapes-world text is short in tokens) and wrapped as a
``PreTrainedTokenizerFast`` with the special tokens and default post-processing of its family: what
matters for the tests is *how* they tokenise around special tokens and whether they add BOS on their own
(Llama-2 and Llama-3 do, Qwen2 does not), not the merges.
"""
from __future__ import annotations

from typing import Dict, List

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from mllm.tokenizer import tiny_corpus

VOCAB = 600

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _wrap(backend: Tokenizer, **specials: str) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                  model_input_names=["input_ids", "attention_mask"], **specials)
    tok.padding_side = "right"
    return tok


def _byte_level(specials: List[str]) -> Tokenizer:
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(tiny_corpus(), trainer=trainer)
    return backend


def _bos_template(backend: Tokenizer, bos: str) -> None:
    """The default post-processing of Llama's tokenizers: BOS before every sequence."""
    bos_id = backend.token_to_id(bos)
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bos_id)])


def llama2_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-2 / Vicuna style: a SentencePiece-like BPE (words start with "▁", the first one too; unknown
    bytes fall back to <0xNN>), <unk> <s> </s>, and <s> added to every sequence by default."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁",
                                                                                     prepend_scheme="first",
                                                                                     split=False)])
    trainer = trainers.BpeTrainer(vocab_size=VOCAB + 256, special_tokens=specials + byte_tokens,
                                  show_progress=False)
    backend.train_from_iterator(tiny_corpus(), trainer=trainer)
    _bos_template(backend, "<s>")
    # Llama-2 has no pad token; fine-tuning recipes pad with <unk>
    return _wrap(backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-3 style: byte-level BPE, <|begin_of_text|> added by default, <|eot_id|> ends a turn."""
    backend = _byte_level(LLAMA3_SPECIALS)
    _bos_template(backend, "<|begin_of_text|>")
    return _wrap(backend, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|end_of_text|>",
                 additional_special_tokens=LLAMA3_SPECIALS[2:])


def qwen2_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2 style: byte-level BPE, no BOS, ChatML markers, EOS <|endoftext|> (a turn ends with <|im_end|>)."""
    backend = _byte_level(QWEN2_SPECIALS)
    return _wrap(backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                 additional_special_tokens=QWEN2_SPECIALS[1:])


BUILDERS: Dict[str, object] = {"llama2": llama2_tokenizer, "llama3": llama3_tokenizer, "qwen2": qwen2_tokenizer}
