"""``TransformersBackend``: chat with an exported checkpoint (or any transformers image-text-to-text / causal LM
directory) through plain transformers: ``AutoProcessor`` + ``AutoModelForImageTextToText`` (a text-only
causal LM: ``AutoTokenizer`` + ``AutoModelForCausalLM``), the processor's ``apply_chat_template`` and image
handling. A remote-code export (``auto_map`` in its config.json) runs only with ``trust_remote_code=True``,
because that executes the export's Python files.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

from data_pipelines.tokenize import stop_token_ids

from .backends import ChatBackend, _read_json
from .prompt import ChatError, Prompt


class TransformersBackend(ChatBackend):
    """An exported checkpoint (or any transformers image-text-to-text / causal LM directory)."""

    kind = "transformers"

    def __init__(self, path: str, device: str = "cpu", dtype: Optional[torch.dtype] = None,
                 trust_remote_code: bool = False):
        self.source = path
        raw = _read_json(os.path.join(path, "config.json"))
        if "auto_map" in raw and not trust_remote_code:
            raise ChatError(f"{path} is a remote-code export: its config.json auto_map "
                            f"({', '.join(sorted(raw['auto_map']))}) points at Python files in that directory, which "
                            f"transformers must execute to build the model. Read them, then rerun with "
                            f"--trust-remote-code")
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        auto_map = getattr(config, "auto_map", None) or {}
        if "AutoModelForImageTextToText" in auto_map or type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
            model_cls, vision = AutoModelForImageTextToText, True
        elif "AutoModelForCausalLM" in auto_map or type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
            model_cls, vision = AutoModelForCausalLM, False
        else:
            raise ChatError(f"{path}: model_type {config.model_type!r} is neither an image-text-to-text model nor a "
                            f"causal LM in transformers {transformers.__version__}")
        major = int(transformers.__version__.split(".")[0])
        if vision:
            # the PIL image backend: what mllm's AnyResImageProcessor reproduces bit for bit (export --verify)
            backend = {"backend": "pil"} if major >= 5 else {"use_fast": False}
            self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **backend)
            self.tokenizer = self.processor.tokenizer
            self.image_token = getattr(self.processor, "image_token", None)
            if self.image_token is None:
                self.no_images_reason = f"the processor of {path} has no image token"
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.no_images_reason = f"{path} is a text-only language model ({type(config).__name__})"
        self.chat_template = getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template
        if not self.chat_template:
            raise ChatError(f"{path} has no chat template (chat_template.jinja, or chat_template in "
                            f"tokenizer_config.json): prompts cannot be built in the model's format")
        dtype_kw = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
        self.model = model_cls.from_pretrained(path, trust_remote_code=trust_remote_code, **dtype_kw).to(device).eval()
        text_config = config.get_text_config()
        self.context_length = getattr(text_config, "max_position_embeddings", None)
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.stop_ids = stop_token_ids(self.tokenizer, self._end_of_turn(), extra=eos)

    def _end_of_turn(self) -> str:
        """The special token the chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``),
        or "". An export's generation_config names only EOS, and a ChatML or Llama-3 model ends its turns with
        another token; without it as a stop, answers would run on into an invented next turn."""
        marker = "MLLM_END_OF_TURN_PROBE"
        try:
            text = self._render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                add_generation_prompt=False)
        except Exception:  # a template that cannot render this probe: EOS alone
            return ""
        tail = text.split(marker, 1)[1] if marker in text else ""
        ids = self.tokenizer.encode(tail, add_special_tokens=False)[:1]
        specials = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        return self.tokenizer.decode(ids) if ids and ids[0] in specials else ""

    def render(self, messages: Sequence[Dict[str, Any]]) -> str:
        return self._render(messages, add_generation_prompt=True)

    def _render(self, messages: Sequence[Dict[str, Any]], add_generation_prompt: bool) -> str:
        if self.processor is not None:
            # processors' templates take content as a list of parts
            parts = [dict(m, content=[{"type": "text", "text": m["content"]}] if isinstance(m["content"], str)
                          else m["content"]) for m in messages]
            return self.processor.apply_chat_template(parts, add_generation_prompt=add_generation_prompt,
                                                      tokenize=False)
        flat = [dict(m, content=_text_of(m["content"])) for m in messages]
        return self.tokenizer.apply_chat_template(flat, add_generation_prompt=add_generation_prompt, tokenize=False)

    def encode(self, messages: Sequence[Dict[str, Any]], images: Sequence[Any]) -> Prompt:
        text = self.render(messages)
        try:
            if self.processor is not None:
                kwargs = {"images": list(images)} if images else {}
                # the template writes BOS where the format wants it: nothing is added
                enc = self.processor(text=text, add_special_tokens=False, return_tensors="pt", **kwargs)
            else:
                enc = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        except ValueError as e:
            raise ChatError(f"the processor of {self.source} rejected the prompt: {e}") from None
        ids = enc["input_ids"]  # (1, L)
        n_image = 0
        if self.image_token is not None:
            n_image = int((ids == self.tokenizer.convert_tokens_to_ids(self.image_token)).sum())
        return Prompt(text, ids, {k: v for k, v in enc.items() if k != "input_ids"}, n_image)

    def generate(self, prompt: Prompt, max_new_tokens: int, streamer=None, **sampling: Any) -> List[int]:
        model = self.model
        dtype = next(model.parameters()).dtype
        inputs = {k: (v.to(model.device, dtype) if v.is_floating_point() else v.to(model.device))
                  for k, v in prompt.model_inputs.items()}
        out = model.generate(input_ids=prompt.input_ids.to(model.device), **inputs, max_new_tokens=max_new_tokens,
                             eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                             streamer=streamer, **sampling)  # (1, L + n)
        return out[0, prompt.length:].tolist()


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content)
