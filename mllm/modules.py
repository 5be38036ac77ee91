"""The trainable modules of a ``MultimodalLM``, named once for stage specs, freezing and consolidation.

    MODULES                       # ("vision", "connector", "llm", "gen_head"): what a stage sets a mode for
    module_parts(model)           # {"vision": model.vision_tower, ...} for the modules the model has
    loose_parameters(model, "connector")   # [model.image_newline]: parameters outside any module
    state_prefixes("connector")   # ("connector.", "image_newline"): its keys in model.state_dict()

A loose parameter belongs to the module it trains with: LLaVA-NeXT's ``image_newline`` is part of the
vision-to-LLM mapping, so it follows the connector's mode. Plain names only (no torch), so configs can
use this module without importing the model.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

# module -> the MultimodalLM attribute that holds it (its state-dict prefix is the attribute + ".")
ATTRIBUTES: Dict[str, str] = {"vision": "vision_tower", "connector": "connector", "llm": "llm",
                              "gen_head": "gen_head"}
MODULES: Tuple[str, ...] = tuple(ATTRIBUTES)
# module -> loose parameters (MultimodalLM attributes that are a Parameter or None) that train with it
LOOSE: Dict[str, Tuple[str, ...]] = {"connector": ("image_newline",)}


def module_parts(model: Any) -> Dict[str, Any]:
    """The modules ``model`` has (an optional one, such as ``gen_head``, may be None and is left out)."""
    parts = {name: getattr(model, attr, None) for name, attr in ATTRIBUTES.items()}
    return {name: mod for name, mod in parts.items() if mod is not None}


def loose_parameters(model: Any, name: str) -> List[Any]:
    """The loose parameters of module ``name`` that ``model`` has."""
    found = [getattr(model, attr, None) for attr in LOOSE.get(name, ())]
    return [p for p in found if p is not None]


def state_prefixes(name: str) -> Tuple[str, ...]:
    """Module ``name``'s keys in the model's state dict: its prefix, and its loose parameters' exact names."""
    return (ATTRIBUTES[name] + ".",) + LOOSE.get(name, ())


def owns_key(name: str, key: str) -> bool:
    prefix, *loose = state_prefixes(name)
    return key.startswith(prefix) or key in loose
