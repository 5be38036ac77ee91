"""Pieces every export path shares: loading a checkpoint (LoRA merged), portable tokenizer files, generation
config and safetensors weights.

    model = load_for_export("ckpt")            # mllm checkpoint in float32; a LoRA adapter in it is merged
    model = merge_lora_if_any(model)           # in memory: peft-wrapped LLM -> plain merged weights
    write_tokenizer(model.tokenizer, out, image_token="<image>", chat_template=jinja_or_None)
    write_generation_config(model.tokenizer, out, stop_ids=processor.stop_ids)   # EOS + end-of-turn ids
    write_weights(state_dict, out)             # model.safetensors (sharded above max_shard_size)

The tokenizer files are written in the layout both transformers 4.57 and 5.x read:
``tokenizer_config.json`` names ``PreTrainedTokenizerFast`` (5.x writes ``TokenizersBackend``, which 4.57
does not know), lists ``model_input_names``, keeps the added specials in ``additional_special_tokens`` and
names the image token in ``extra_special_tokens`` (a mapping, as 4.57 expects; 5.x writes a list).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from mllm.checkpoint import is_peft
from mllm.checkpoint import merge_lora_if_any as merge
from mllm.checkpoint import save_state_dict
from mllm.constants import IMAGE_TOKEN
from mllm.model import load_pretrained

CHAT_TEMPLATE_FILE = "chat_template.jinja"
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]

Log = Callable[[str], None]


# ---- LoRA ---------------------------------------------------------------------------------------------
def merge_lora_if_any(model, log: Optional[Log] = None):
    """Merge a peft LoRA-wrapped LLM into plain weights, in place; returns the model.

    ``mllm.checkpoint.merge_lora_if_any`` does the merge (``merge_and_unload``); this also refuses LoRA
    layers anywhere else, which would otherwise be exported as unknown ``lora_A`` / ``base_layer`` keys.
    """
    wrapped = is_peft(model.llm)
    merge(model)
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # without peft nothing can hold adapters
        return model
    leftover = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    if leftover:
        raise ValueError(f"LoRA layers outside the LLM's peft wrapper cannot be merged: {leftover[:5]}; "
                         f"merge them before exporting")
    if wrapped and log:
        log("merged the LLM's LoRA adapter into its weights")
    return model


def load_for_export(path: str, log: Optional[Log] = None):
    """Load an mllm checkpoint directory in float32, with a LoRA adapter kept beside the base weights
    (``mllm.checkpoint.ADAPTER_DIR``) merged into the LLM."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {path!r} is not a directory")
    model = load_pretrained(path, dtype=torch.float32)
    return merge_lora_if_any(model, log).eval()


# ---- tokenizer ------------------------------------------------------------------------------------------
def write_tokenizer(tokenizer, out_dir: str, image_token: str = IMAGE_TOKEN,
                    chat_template: Optional[str] = None) -> None:
    """Save ``tokenizer`` in the layout transformers 4.57 and 5.x both load (see the module docstring)."""
    tokenizer.save_pretrained(out_dir)
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    for key in ("backend", "is_local", "local_files_only", "name_or_path", "_commit_hash", "trust_remote_code"):
        cfg.pop(key, None)  # 5.x-only or load-time details, not tokenizer settings
    cfg.pop("chat_template", None)  # written once, as chat_template.jinja
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_input_names"] = list(MODEL_INPUT_NAMES)
    extra_tokens = cfg.pop("extra_special_tokens", None)
    additional = list(cfg.get("additional_special_tokens") or [])
    if isinstance(extra_tokens, list):
        additional += [t for t in extra_tokens if isinstance(t, str)]
    elif isinstance(extra_tokens, dict):
        additional += [t for t in extra_tokens.values() if isinstance(t, str)]
    if image_token not in additional:
        additional.append(image_token)
    cfg["additional_special_tokens"] = list(dict.fromkeys(additional))
    # 4.57 reads this as {attribute: token}; it gives the tokenizer an ``image_token`` attribute, which
    # Llava processors of both versions use
    cfg["extra_special_tokens"] = {"image_token": image_token}
    cfg["add_bos_token"] = cfg["add_eos_token"] = False  # see no_default_specials
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    no_default_specials(out_dir)
    template_path = os.path.join(out_dir, CHAT_TEMPLATE_FILE)
    if chat_template is not None:
        with open(template_path, "w") as f:
            f.write(chat_template)
    elif os.path.exists(template_path):
        os.remove(template_path)


def no_default_specials(out_dir: str) -> None:
    """Make the saved ``tokenizer.json`` add no special tokens by default.

    The chat template writes BOS (and EOS) into the text where the format wants them, as training does. A
    tokenizer that also adds BOS by default (Llama's ``TemplateProcessing "<s> $A"``) would give two BOS to
    every tool that renders the template and then tokenises with default settings (``processor(text=...)``,
    lmms-eval, ...). Without added specials, render-then-tokenise gives the training ids whatever the
    tool's ``add_special_tokens``, and so does ``apply_chat_template(tokenize=True)`` (vLLM, transformers).
    """
    path = os.path.join(out_dir, "tokenizer.json")
    if not os.path.isfile(path):  # a slow-only tokenizer: tokenizer_config's add_bos_token governs
        return
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["post_processor"] = _without_specials(data.get("post_processor"))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    from tokenizers import Tokenizer  # here, not at the top: a dependency of transformers, used by this check only

    tok = Tokenizer.from_file(path)
    if tok.encode("a").ids != tok.encode("a", add_special_tokens=False).ids:
        raise ValueError(f"{path}: the tokenizer still adds special tokens by default (post_processor "
                         f"{data['post_processor']!r}); render-then-tokenise would double them")


def _without_specials(pp: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if pp is None:
        return None
    kind = pp.get("type")
    if kind == "TemplateProcessing":
        def keep(seq):
            return [piece for piece in seq if "SpecialToken" not in piece]

        return dict(pp, single=keep(pp["single"]), pair=keep(pp["pair"]), special_tokens={})
    if kind == "Sequence":
        inner = [q for q in (_without_specials(p) for p in pp["processors"]) if q is not None]
        return dict(pp, processors=inner)
    if kind in ("BertProcessing", "RobertaProcessing"):
        return None  # they exist to add CLS / SEP
    return pp  # ByteLevel: offsets only


def write_generation_config(tokenizer, out_dir: str, text_config: Optional[Dict[str, Any]] = None,
                            stop_ids: Sequence[int] = ()) -> None:
    """generation_config.json with the special ids generation needs (greedy by default, like ours).

    ``eos_token_id`` lists every id an answer ends on: EOS and the chat template's end-of-turn token
    (ChatML's ``<|im_end|>``, Llama-3's ``<|eot_id|>``; ``MultimodalProcessor.stop_ids``), so plain
    ``generate`` stops where our chat and eval stop."""
    text_config = text_config or {}

    def pick(name):
        value = getattr(tokenizer, f"{name}_token_id", None)
        return value if value is not None else text_config.get(f"{name}_token_id")

    eos = [int(i) for i in stop_ids] or pick("eos")
    if isinstance(eos, list) and len(eos) == 1:
        eos = eos[0]
    gen = {"bos_token_id": pick("bos"), "eos_token_id": eos, "pad_token_id": pick("pad"),
           "do_sample": False}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({k: v for k, v in gen.items() if v is not None}, f, indent=2)
        f.write("\n")


# ---- weights / json -----------------------------------------------------------------------------------------
def write_weights(state: Dict[str, torch.Tensor], out_dir: str, max_shard_size="5GB") -> List[str]:
    """Safetensors only (sharded with an index above ``max_shard_size``); shared storages are cloned."""
    seen = set()
    clean: Dict[str, torch.Tensor] = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and key in seen:
            t = t.clone()  # safetensors refuses aliased tensors (e.g. a tied lm_head written twice)
        seen.add(key)
        clean[name] = t
    return save_state_dict(clean, out_dir, max_shard_size=max_shard_size)


def write_json(data: Dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


# generic PretrainedConfig fields that describe a run or a task head, not the decoder
_NOT_ARCHITECTURE = ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype",
                     "_attn_implementation_autoset", "output_hidden_states", "output_attentions", "return_dict",
                     "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type")


def hf_text_config(llm_config) -> Dict[str, Any]:
    """The LLM's config as a dict that transformers 4.57 and 5.x both read.

    5.x keeps RoPE settings only in ``rope_parameters``; 4.57 reads ``rope_theta`` (and ``rope_scaling`` for
    non-default RoPE), so both are written.
    """
    cfg = llm_config.to_dict()
    for key in _NOT_ARCHITECTURE:
        cfg.pop(key, None)
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        cfg.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            cfg.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    return cfg


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
