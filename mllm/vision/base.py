"""The one interface every vision tower implements (HF CLIP, HF SigLIP, open_clip, ...)."""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
from torch import nn


class VisionTower(nn.Module):
    """Maps tiles to patch features.

    forward(pixel_values (N, 3, S, S)) -> features (N, num_tokens, hidden_size), already reduced to the
    configured feature layer(s) (concatenated on channels when several) and select strategy
    ("default" drops the CLS token, "full" keeps every token).

    Attributes every tower sets:
      image_size   S, the square tile size it expects
      patch_size   P; the patch grid is (S // P) x (S // P)
      hidden_size  channels of the returned features (x number of concatenated layers)
      has_cls      whether the backbone prepends a CLS token
      num_tokens   tokens returned per tile: (S // P) ** 2, + 1 when has_cls and strategy is "full"
      image_mean, image_std   normalisation the tower was trained with (RGB, 0-1 scale)
    """

    image_size: int
    patch_size: int
    hidden_size: int
    has_cls: bool
    select_strategy: str
    image_mean: Tuple[float, float, float]
    image_std: Tuple[float, float, float]

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        extra = 1 if (self.has_cls and self.select_strategy == "full") else 0
        return self.grid_size ** 2 + extra

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def arch_config(self) -> dict:  # pragma: no cover - interface
        """``VisionConfig.config`` that rebuilds this architecture offline (``name_or_path=None``), with the
        same state dict keys, so a saved mllm checkpoint loads strictly without a hub."""
        raise NotImplementedError

    def gradient_checkpointing_enable(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


# ---- helpers shared by every tower ---------------------------------------------------------------
SELECT_STRATEGIES = ("default", "full")


def resolve_feature_layers(feature_layer: Union[int, Sequence[int]], num_layers: int) -> List[int]:
    """Map ``vision.feature_layer`` to non-negative hidden-state indices (HF convention).

    There are ``num_layers + 1`` hidden states: 0 = the tokens entering the first block, k = the output of
    block k, -1 = the last block's output (before any final norm). A list keeps its order (that is the
    channel order of the concatenation).
    """
    layers = [feature_layer] if isinstance(feature_layer, int) and not isinstance(feature_layer, bool) \
        else feature_layer
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"vision.feature_layer must be an int or a non-empty list of ints, got {feature_layer!r}")
    n = num_layers + 1
    out = []
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"vision.feature_layer: {k!r} is not an int (got {feature_layer!r})")
        if not -n <= k < n:
            raise ValueError(f"vision.feature_layer {k} is out of range for a tower with {num_layers} layers "
                             f"(hidden states {-n}..{n - 1}; 0 = embeddings, -1 = last layer)")
        out.append(k % n)
    return out


def check_select_strategy(select_strategy: str, has_cls: bool, tower: str) -> None:
    """Reject unknown strategies, and "default" on a tower without CLS (it would drop a real patch)."""
    if select_strategy not in SELECT_STRATEGIES:
        raise ValueError(f"vision.select_strategy {select_strategy!r} is not one of {', '.join(SELECT_STRATEGIES)}")
    if select_strategy == "default" and not has_cls:
        raise ValueError(f"vision.select_strategy 'default' drops the CLS token, but {tower} has no CLS token: "
                         f"it would silently drop a real image patch. Use select_strategy 'full'.")


def jsonable(x):
    """Lists/tuples -> lists, dict keys -> str, recursively: the form a config takes after a JSON round trip."""
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    return x
