"""``MultimodalProcessor``: everything between a conversation and model inputs, in one object.

    proc = MultimodalProcessor.for_model(model)              # template, tokenizer, geometry from the model
    proc = MultimodalProcessor.from_pretrained("ckpt/")      # the same, from a checkpoint directory
    proc.save_pretrained("ckpt/")                            # processor_config.json + tokenizer files

    sample = proc.encode_sample(record)      # training: {"input_ids", "labels", "pixel_values", ...}
    prompt = proc.encode_prompt(messages, images)            # chat, eval, export verification, benchmarks
    prompt.input_ids, prompt.pixel_values, prompt.image_sizes
    ids, mask = proc.pad([prompt.input_ids, other_ids])     # left-padded batch (B, L) for generation
    proc.stop_ids                                            # EOS and the template's end-of-turn token

Like a transformers processor (``LlavaNextProcessor``: tokenizer + image processor + chat template), it
owns the chat template (``data_pipelines.templates``), the tokenizer, the AnyRes image processor and the
model's image geometry (how many ``<image>`` positions an image of a given size needs), the image-token
expansion, the stop / end-of-turn ids and the padding side. Training (``encode_sample``) and every
generation path (``encode_prompt``) tokenise through ``data_pipelines.tokenize``, so the same conversation
gives the same ids and pixels on every path (``tests/test_processor_parity.py`` checks it, also against
the exported transformers processor).

``processor_config.json`` records the template, system prompt, image token, max length, pixel limit,
padding side, the geometry and the image normalisation; ``from_pretrained`` reads it, or, for a checkpoint
written without one, derives the same from ``mllm_config.json`` and the geometry in ``config.json``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from data_pipelines.image_processor import AnyResImageProcessor
from data_pipelines.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from data_pipelines.records import IMAGE_MARKER, Record, RecordError
from data_pipelines.templates import ChatTemplate, Segment, get_template
from data_pipelines.tokenize import (encode_conversation, encode_prompt, encode_segments, expand_images, image_token_id,
                                     stop_token_ids)
from mllm.batching import pad_left
from mllm.checkpoint import HF_CONFIG_NAME
from mllm.config import CONFIG_NAME, ModelConfig
from mllm.geometry import ImageGeometry
from mllm.tokenizer import load_tokenizer

PROCESSOR_CONFIG_NAME = "processor_config.json"


@dataclass
class PromptInputs:
    """One encoded generation prompt: ids with every image's run expanded, and that prompt's images."""

    text: str  # the template's rendering, one image marker per image
    input_ids: List[int]
    image_sizes: List[Tuple[int, int]] = field(default_factory=list)  # (h, w) per image, in marker order
    pixel_values: Optional[torch.Tensor] = None  # (N, T_max, 3, S, S) when pixels were asked for
    num_image_tokens: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def model_inputs(self) -> Dict[str, torch.Tensor]:
        """``pixel_values`` and ``image_sizes`` as ``MultimodalLM`` takes them ({} without images)."""
        if self.pixel_values is None:
            return {}
        return {"pixel_values": self.pixel_values, "image_sizes": torch.tensor(self.image_sizes, dtype=torch.long)}


def _located(err: RecordError, record: Record) -> RecordError:
    if err.origin is not None:
        return err
    return RecordError(err.reason, err.detail, record.origin, record.id, err.field)


class MultimodalProcessor:
    """See the module docstring. ``image_processor`` must agree with ``geometry`` (tile size, pinpoints)."""

    def __init__(self, tokenizer: Any, template: ChatTemplate, geometry: ImageGeometry,
                 image_processor: AnyResImageProcessor, *, max_length: Optional[int] = None,
                 image_token: str = IMAGE_MARKER, max_pixels: int = DEFAULT_MAX_PIXELS, padding_side: str = "left"):
        pins = [tuple(p) for p in geometry.grid_pinpoints]
        if (image_processor.tile_size != geometry.tile_size
                or [tuple(p) for p in image_processor.grid_pinpoints] != pins):
            raise ValueError(f"image processor (tile {image_processor.tile_size}, pinpoints "
                             f"{image_processor.grid_pinpoints}) disagrees with the model geometry (tile "
                             f"{geometry.tile_size}, pinpoints {pins}): the token counts reserved would not "
                             f"match the features produced")
        if padding_side != "left":
            raise ValueError(f"padding_side must be 'left' (generation appends at the right end), got {padding_side!r}")
        self.tokenizer, self.template, self.geometry = tokenizer, template, geometry
        self.image_processor = image_processor
        self.max_length, self.image_token, self.max_pixels = max_length, image_token, max_pixels
        self.padding_side = padding_side

    # ---- construction / persistence -------------------------------------------------------------------
    @classmethod
    def for_model(cls, model: Any, *, max_length: Optional[int] = None, template: Optional[str] = None,
                  system: Optional[str] = None, num_threads: Optional[int] = None) -> "MultimodalProcessor":
        """The processor of a ``MultimodalLM`` (its config, tokenizer and geometry)."""
        return cls.from_parts(model.config, model.tokenizer, model.geometry, max_length=max_length,
                              template=template, system=system, num_threads=num_threads)

    @classmethod
    def from_parts(cls, config: ModelConfig, tokenizer: Any, geometry: ImageGeometry, *,
                   max_length: Optional[int] = None, template: Optional[str] = None, system: Optional[str] = None,
                   num_threads: Optional[int] = None) -> "MultimodalProcessor":
        kwargs = {} if num_threads is None else {"num_threads": num_threads}
        image_processor = AnyResImageProcessor.from_config(config, tile_size=geometry.tile_size, **kwargs)
        return cls(tokenizer, get_template(template or config.chat_template, system=system), geometry,
                   image_processor, max_length=max_length if max_length is not None else config.max_length,
                   image_token=config.image_token, max_pixels=config.image.max_pixels)

    @classmethod
    def from_pretrained(cls, path: str, *, tokenizer: Any = None, **kwargs: Any) -> "MultimodalProcessor":
        """From a checkpoint directory (``processor_config.json``, else the model config and geometry)."""
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
        saved = os.path.join(path, PROCESSOR_CONFIG_NAME)
        if os.path.isfile(saved):
            with open(saved) as f:
                data = json.load(f)
            try:
                geometry = _geometry(data["geometry"])
                image = data["image"]
                image_processor = AnyResImageProcessor(geometry.tile_size, geometry.pinpoints, image["mean"],
                                                       image["std"], **({"num_threads": kwargs["num_threads"]}
                                                                        if "num_threads" in kwargs else {}))
                template = get_template(kwargs.get("template") or data["chat_template"],
                                        system=kwargs.get("system", data.get("system")))
                return cls(tokenizer, template, geometry, image_processor,
                           max_length=kwargs.get("max_length", data.get("max_length")),
                           image_token=data["image_token"], max_pixels=int(data["max_pixels"]),
                           padding_side=data.get("padding_side", "left"))
            except (KeyError, TypeError) as e:
                raise ValueError(f"{saved}: missing or malformed field {e}") from None
        config = ModelConfig.load(os.path.join(path, CONFIG_NAME))
        with open(os.path.join(path, HF_CONFIG_NAME)) as f:
            geometry = _geometry(json.load(f)["geometry"])
        return cls.from_parts(config, tokenizer, geometry, **kwargs)

    def to_dict(self) -> Dict[str, Any]:
        ip = self.image_processor
        return {"processor_class": type(self).__name__, "chat_template": self.template.name,
                "system": self.template.default_system, "image_token": self.image_token,
                "max_length": self.max_length, "max_pixels": self.max_pixels, "padding_side": self.padding_side,
                "geometry": self.geometry.to_dict(),
                "image": {"size": ip.tile_size, "mean": list(ip.image_mean), "std": list(ip.image_std)}}

    def save_pretrained(self, path: str) -> None:
        """``processor_config.json`` and the tokenizer files into ``path`` (a checkpoint directory)."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, PROCESSOR_CONFIG_NAME), "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        self.tokenizer.save_pretrained(path)

    # ---- ids the generation paths need ----------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        """The image token's id; a ValueError when the tokenizer does not hold it as one special token."""
        return image_token_id(self.tokenizer, self.image_token)

    @property
    def stop_ids(self) -> List[int]:
        """EOS first, then the template's end-of-turn token when it is a token of its own."""
        tok = self.tokenizer
        return stop_token_ids(tok, self.template.end_of_turn(tok.eos_token or ""))

    @property
    def pad_token_id(self) -> int:
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; batched generation needs one")
        return self.tokenizer.pad_token_id

    def num_image_tokens(self, image_hw: Sequence[int]) -> int:
        return self.geometry.num_image_tokens(tuple(int(v) for v in image_hw))

    # ---- training -------------------------------------------------------------------------------------
    def load_images(self, record: Record) -> Tuple[List[torch.Tensor], List[Tuple[int, int]]]:
        tiles, sizes = [], []
        for k, source in enumerate(record.images):
            try:
                image = load_image(source, max_pixels=self.max_pixels)
            except ImageLoadError as e:
                reason = "missing_image" if e.reason == "file not found" else "unreadable_image"
                raise RecordError(reason, str(e), record.origin, record.id, f"images[{k}]") from None
            t, hw = self.image_processor.process(image)  # (T, 3, S, S), (h, w)
            tiles.append(t)
            sizes.append(hw)
        return tiles, sizes

    def encode_sample(self, record: Record, verify: bool = False) -> Dict[str, Any]:
        """Record -> training sample: images loaded and tiled, conversation rendered and tokenised, each
        ``<image>`` expanded, labels on the assistant turns, truncated to ``max_length``."""
        tiles, sizes = self.load_images(record)
        counts = [self.geometry.num_image_tokens(hw) for hw in sizes]
        try:
            enc = encode_conversation(record.messages, self.template, self.tokenizer, counts,
                                      max_length=self.max_length, image_token=self.image_token, verify=verify,
                                      where=record.where)
        except RecordError as err:
            raise _located(err, record) from None
        return {
            "input_ids": torch.tensor(enc.input_ids, dtype=torch.long),
            "labels": torch.tensor(enc.labels, dtype=torch.long),
            "pixel_values": tiles,
            "image_sizes": sizes,
            "length": len(enc),
            "modality": "image" if tiles else "text",
            "id": record.id,
            "skipped": [],
        }

    # ---- generation -----------------------------------------------------------------------------------
    def render(self, messages: Sequence[Dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The template's text for ``messages`` (with the generation prompt for the next assistant turn)."""
        tok = self.tokenizer
        if add_generation_prompt:
            return self.template.generation_prompt(messages, bos_token=tok.bos_token, eos_token=tok.eos_token)
        return self.template.text(messages, bos_token=tok.bos_token, eos_token=tok.eos_token)

    def encode_prompt(self, messages: Sequence[Dict[str, Any]], images: Sequence[Any] = (), *,
                      pixels: bool = True) -> PromptInputs:
        """A generation prompt: ``messages`` (ending with a user turn) and their PIL images in marker order.

        ``pixels=False`` skips the image preprocessing (the sizes alone fix the ids); batch it later with
        ``images(...)``. A marker / image count mismatch is a ValueError."""
        images = list(images)
        sizes = [(int(im.height), int(im.width)) for im in images]
        counts = [self.geometry.num_image_tokens(hw) for hw in sizes]
        ids = encode_prompt(messages, self.template, self.tokenizer, counts, image_token=self.image_token)
        pixel_values = self.images(images)["pixel_values"] if (pixels and images) else None
        return PromptInputs(self.render(messages), ids, sizes, pixel_values, sum(counts))

    def encode_text(self, text: str, images: Sequence[Any] = ()) -> PromptInputs:
        """An already rendered prompt ``text`` (one marker per image) -> ids and pixels, tokenised as one
        segment without added specials, as ``encode_prompt`` tokenises a rendered generation prompt."""
        images = list(images)
        sizes = [(int(im.height), int(im.width)) for im in images]
        counts = [self.geometry.num_image_tokens(hw) for hw in sizes]
        ids, labels = encode_segments([Segment(text)], self.tokenizer)
        if counts or self.image_token in text:
            ids, _ = expand_images(ids, labels, self.image_token_id, counts)
        pixel_values = self.images(images)["pixel_values"] if images else None
        return PromptInputs(text, ids, sizes, pixel_values, sum(counts))

    def images(self, images: Sequence[Any]) -> Dict[str, torch.Tensor]:
        """PIL images -> {"pixel_values": (N, T_max, 3, S, S), "image_sizes": (N, 2), "num_tiles": (N,)}."""
        return self.image_processor(list(images))

    def pad(self, rows: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token rows -> (input_ids, attention_mask), each (B, L_max), left-padded with the pad token."""
        return pad_left(rows, self.pad_token_id)

    def __repr__(self) -> str:
        return (f"MultimodalProcessor(template={self.template.name!r}, image_token={self.image_token!r}, "
                f"tile_size={self.geometry.tile_size}, pinpoints={self.geometry.pinpoints})")


def _geometry(data: Dict[str, Any]) -> ImageGeometry:
    data = dict(data)
    data["grid_pinpoints"] = tuple(tuple(int(v) for v in p) for p in data.get("grid_pinpoints") or ())
    return ImageGeometry(**data)
