"""Exact-string registries for every swappable part (vision towers, connectors, templates, stages, ...).

    VISION_TOWERS = Registry("vision tower")

    @VISION_TOWERS.register("hf_clip")
    def build_hf_clip(cfg): ...

    VISION_TOWERS.get("hf_clip")   # unknown keys raise ValueError listing the known ones

Keys are matched exactly: a part is never chosen by a substring of a model name.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def add(self, key: str, obj: T) -> T:
        return self.register(key)(obj)

    def get(self, key: str) -> T:
        try:
            return self._items[key]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ValueError(f"unknown {self.kind} {key!r}; known: {known}") from None

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def keys(self) -> list[str]:
        return sorted(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())
