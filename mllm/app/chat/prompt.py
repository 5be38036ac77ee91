"""What a chat turn is made of: the generation settings, an encoded prompt, and the error a user can cause.

    settings = GenerationSettings(max_new_tokens=64, temperature=0.7, top_p=0.9)
    model.generate(..., **settings.sampling_kwargs())
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

import torch


class ChatError(ValueError):
    """An input the chat cannot use; the conversation is unchanged."""


# ---- settings and prompts ----------------------------------------------------------------------------------
@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")

    def sampling_kwargs(self) -> Dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False, "num_beams": 1}
        return {"do_sample": True, "num_beams": 1, "temperature": self.temperature, "top_p": self.top_p}


@dataclass
class Prompt:
    text: str  # the chat template's rendering, one <image> marker per image
    input_ids: torch.Tensor  # (1, L), image markers expanded to their token runs
    model_inputs: Dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, image_sizes, ...
    num_image_tokens: int = 0

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])
