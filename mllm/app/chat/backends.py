"""Chat backends: what a chat needs from a model (``ChatBackend``), and ``MllmBackend`` for mllm checkpoints.

    backend = MllmBackend.from_pretrained("ckpt/")
    prompt = backend.encode(messages, images)
    answer = backend.decode(backend.generate(prompt, max_new_tokens=64))

``MllmBackend`` gets prompts and pixels from the model's ``MultimodalProcessor`` (``encode_prompt``), the
object that also builds the training samples, so chat sees exactly the training format.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

import torch

from data_pipelines.processor import MultimodalProcessor
from mllm.constants import MAX_IMAGE_PIXELS
from mllm.model import load_pretrained

from .prompt import ChatError, Prompt


class ChatBackend:
    """What a chat needs from a model. Subclasses set the attributes and implement ``render``/``encode``/
    ``generate``."""

    kind = ""
    source: str = ""
    tokenizer: Any = None
    image_token: Optional[str] = None  # None: the model takes no images (``no_images_reason`` says why)
    no_images_reason: str = ""
    context_length: Optional[int] = None  # positions the model can attend over (prompt + answer)
    stop_ids: List[int] = []
    max_pixels: int = MAX_IMAGE_PIXELS

    @property
    def accepts_images(self) -> bool:
        return self.image_token is not None

    def render(self, messages: Sequence[Dict[str, Any]]) -> str:
        raise NotImplementedError

    def encode(self, messages: Sequence[Dict[str, Any]], images: Sequence[Any]) -> Prompt:
        raise NotImplementedError

    def generate(self, prompt: Prompt, max_new_tokens: int, streamer=None, **sampling: Any) -> List[int]:
        """The new token ids (the stop token included when generation stopped on one)."""
        raise NotImplementedError

    def describe_image(self, image: Any) -> str:
        return f"{image.width}x{image.height}"

    def decode(self, new_ids: Sequence[int]) -> str:
        cut = next((j for j, t in enumerate(new_ids) if t in self.stop_ids), len(new_ids))
        return self.tokenizer.decode(list(new_ids[:cut]), skip_special_tokens=True).strip()


class MllmBackend(ChatBackend):
    """A ``MultimodalLM``; prompts and images exactly as the training data pipeline makes them."""

    kind = "mllm"

    def __init__(self, model, source: str = "<memory>"):
        cfg = model.config
        self.model, self.source, self.tokenizer = model, source, model.tokenizer
        self.processor = MultimodalProcessor.for_model(model)
        self.template = self.processor.template
        self.max_pixels = self.processor.max_pixels
        try:
            self.processor.image_token_id
            self.image_token = cfg.image_token
        except ValueError as e:
            self.image_token, self.no_images_reason = None, str(e)
        limits = [int(v) for v in (cfg.max_length, getattr(model.llm.config, "max_position_embeddings", None)) if v]
        self.context_length = min(limits) if limits else None
        self.stop_ids = self.processor.stop_ids

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: Optional[torch.dtype] = None) -> "MllmBackend":
        return cls(load_pretrained(path, device=device, dtype=dtype).eval(), source=path)

    def render(self, messages: Sequence[Dict[str, Any]]) -> str:
        return self.processor.render(messages)

    def encode(self, messages: Sequence[Dict[str, Any]], images: Sequence[Any]) -> Prompt:
        enc = self.processor.encode_prompt(messages, images)  # pixel_values (N, T_max, 3, S, S) with images
        return Prompt(enc.text, torch.tensor([enc.input_ids], dtype=torch.long), enc.model_inputs(),
                      enc.num_image_tokens)

    def generate(self, prompt: Prompt, max_new_tokens: int, streamer=None, **sampling: Any) -> List[int]:
        model = self.model
        ids = prompt.input_ids.to(model.device)  # (1, L)
        extra = {k: v.to(model.device) for k, v in prompt.model_inputs.items()}
        new = model.generate(ids, torch.ones_like(ids), **extra, max_new_tokens=max_new_tokens,
                             eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                             streamer=streamer, **sampling)  # (1, n): only the new tokens
        return new[0].tolist()

    def describe_image(self, image: Any) -> str:
        hw = (image.height, image.width)
        return (f"{image.width}x{image.height}, {self.model.geometry.num_tiles(hw)} tile(s), "
                f"{self.model.num_image_tokens(hw)} tokens")


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ChatError(f"{path}: not valid JSON ({e})") from None
