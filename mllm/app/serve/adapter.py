"""The one place the server touches a chat backend: loading, prompt encoding, decoding, batched generate.

    model = ServedModel.load("ckpt/")                     # an mllm checkpoint or an export (``mllm export``)
    prompt = model.encode(messages, images)               # messages in the chat backends' format, PIL images
    ids, mask = pad_left([prompt.ids, ...], model.pad_token_id)
    new = model.generate(ids, mask, model.collate([prompt.inputs, ...]), max_new_tokens=16, ...)  # (B, n)

Everything else in ``mllm.app.serve`` goes through this class, so a change in how prompts are built (one
processor for every path) is an edit of ``encode`` here and nowhere else. Messages are what
``mllm.app.chat`` takes: ``{"role": "system" | "user" | "assistant", "content": str | [parts]}`` with parts
``{"type": "text", "text": ...}`` and ``{"type": "image"}`` (one per image, in image order).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from mllm.app.chat import load_backend


@dataclass
class EncodedPrompt:
    ids: List[int]  # prompt token ids, image markers expanded to their runs of image tokens
    inputs: Dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values (N, T, 3, S, S), image_sizes ...
    num_image_tokens: int = 0

    @property
    def length(self) -> int:
        return len(self.ids)


class ServedModel:
    """A chat backend (``mllm.app.chat.load_backend``) seen from the server.

    Tokenizer calls are serialised by one lock: requests are encoded on several threads while the batching
    worker decodes, and a fast tokenizer's Rust object must not be used from two threads at once.
    """

    def __init__(self, backend: Any, model_id: Optional[str] = None):
        self.backend = backend
        self.id = model_id or os.path.basename(os.path.normpath(backend.source)) or "mllm"
        self.source = backend.source
        self.kind = backend.kind
        self.tokenizer = backend.tokenizer
        self.stop_ids: List[int] = list(backend.stop_ids)
        self.context_length: Optional[int] = backend.context_length
        self.accepts_images: bool = backend.accepts_images
        self.image_token: Optional[str] = backend.image_token
        self.no_images_reason: str = backend.no_images_reason
        self.max_pixels: int = backend.max_pixels
        pad = self.tokenizer.pad_token_id
        self.pad_token_id: int = int(pad if pad is not None else self.stop_ids[0])
        self._lock = threading.Lock()
        self._net = backend.model  # MultimodalLM (ours) or a transformers model (an export)

    @classmethod
    def load(cls, path: str, *, device: str = "cpu", bf16: bool = False, trust_remote_code: bool = False,
             model_id: Optional[str] = None) -> "ServedModel":

        return cls(load_backend(path, device=device, bf16=bf16, trust_remote_code=trust_remote_code), model_id)

    @property
    def device(self) -> torch.device:
        return next(self._net.parameters()).device

    # ---- prompts ----------------------------------------------------------------------------------------
    def encode(self, messages: Sequence[Dict[str, Any]], images: Sequence[Any]) -> EncodedPrompt:
        """The prompt for the next assistant turn; raises ``ValueError`` (``ChatError``) on unusable input."""
        with self._lock:
            prompt = self.backend.encode(list(messages), list(images))
        ids = prompt.input_ids[0].tolist()  # (1, L) -> L
        inputs = dict(prompt.model_inputs)
        # the attention mask is made for the whole padded batch; any other per-token input would need the same
        # left padding, which only its backend knows how to do
        inputs.pop("attention_mask", None)
        aligned = [k for k, v in inputs.items() if v.dim() == 2 and tuple(v.shape) == tuple(prompt.input_ids.shape)]
        if aligned:
            raise NotImplementedError(f"{self.source}: per-token model inputs {aligned} cannot be batched yet")
        return EncodedPrompt(ids, inputs, int(prompt.num_image_tokens))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids (special tokens dropped, not stripped)."""
        with self._lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- batched generation ------------------------------------------------------------------------------
    @staticmethod
    def collate(inputs: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Per-prompt image inputs -> one batch: each key concatenated over images (dim 0), every other dim
        zero-padded to the largest (AnyRes tiles: (N_i, T_i, 3, S, S) -> (sum N_i, max T_i, 3, S, S); both
        our model and transformers' LlavaNext read only the first T_i tiles of an image, from image_sizes)."""
        keys = sorted({k for d in inputs for k in d})
        out: Dict[str, torch.Tensor] = {}
        for k in keys:
            parts = [d[k] for d in inputs if k in d and d[k].numel()]
            if not parts:
                continue
            shape = [max(p.shape[i] for p in parts) for i in range(1, parts[0].dim())]
            padded = []
            for p in parts:
                pad: List[int] = []
                for have, want in reversed(list(zip(p.shape[1:], shape))):
                    pad += [0, want - have]
                padded.append(torch.nn.functional.pad(p, pad) if any(pad) else p)
            out[k] = torch.cat(padded)
        return out

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, inputs: Dict[str, torch.Tensor],
                 **generate_kwargs: Any) -> torch.Tensor:
        """Left-padded (B, L) prompts -> the new tokens (B, n) (``generate_kwargs`` go to HF ``generate``)."""
        net, device = self._net, self.device
        ids, mask = input_ids.to(device), attention_mask.to(device)
        generate_kwargs.setdefault("pad_token_id", self.pad_token_id)
        if self.kind == "mllm":  # MultimodalLM.generate returns only the new tokens
            extra = {k: v.to(device) for k, v in inputs.items()}
            return net.generate(ids, mask, **extra, **generate_kwargs)
        dtype = next(net.parameters()).dtype
        extra = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
        out = net.generate(input_ids=ids, attention_mask=mask, **extra, **generate_kwargs)  # (B, L + n)
        return out[:, ids.shape[1]:]
