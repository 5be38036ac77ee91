"""Processor of an exported mllm model: image processor + tokenizer, expanding each ``<image>`` in the text
to the number of feature vectors the model makes for that image (AnyRes tiles, Q-Former queries, ...).

    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    batch = processor(images=[img], text="USER: <image>\\nWhat is this? ASSISTANT:", return_tensors="pt")

Images are assigned to ``<image>`` markers in order, across the batch. Works with transformers 4.57 and 5.x.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import transformers
from transformers import BatchFeature, ProcessorMixin

from .anyres_mllm import num_image_tokens


class MllmProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    if int(transformers.__version__.split(".")[0]) < 5:  # 5.x infers these from __init__ (and warns on them)
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token="<image>",
                 tile_size=None, patch_size=None, image_grid_pinpoints=None, has_cls=True,
                 vision_feature_select_strategy="default", use_image_newline=False, num_query_tokens=None,
                 **kwargs):
        self.image_token = image_token
        self.tile_size = tile_size
        self.patch_size = patch_size
        self.image_grid_pinpoints = [list(p) for p in (image_grid_pinpoints or [])]
        self.has_cls = has_cls
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.use_image_newline = use_image_newline
        self.num_query_tokens = num_query_tokens  # tokens per tile for a Q-Former; None for a spatial MLP
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def num_image_tokens(self, image_hw) -> int:
        keeps_cls = self.has_cls and self.vision_feature_select_strategy == "full"
        return num_image_tokens(image_hw, self.image_grid_pinpoints, self.tile_size, self.patch_size, keeps_cls,
                                self.use_image_newline, self.num_query_tokens)

    def __call__(self, images=None, text=None, return_tensors: Optional[str] = "pt", **kwargs) -> BatchFeature:
        if text is None:
            raise ValueError("MllmProcessor needs text (with one <image> per image)")
        texts: List[str] = [text] if isinstance(text, str) else list(text)
        data = {}
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            flat = [im for group in images for im in (group if isinstance(group, (list, tuple)) else [group])]
            image_inputs = self.image_processor(flat, return_tensors="pt")
            if "image_sizes" in image_inputs:
                sizes = [tuple(int(v) for v in hw) for hw in image_inputs["image_sizes"].tolist()]
            else:  # fixed resolution: the count does not depend on the size; keep the originals anyway
                sizes = [(im.height, im.width) for im in flat]
                image_inputs["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
            data.update(image_inputs)
            texts = self._expand(texts, sizes)
        elif any(self.image_token in t for t in texts):
            raise ValueError(f"the text holds {self.image_token} but no images were given")
        kwargs.pop("images_kwargs", None)
        text_inputs = self.tokenizer(texts, return_tensors=return_tensors, **kwargs)
        data.update(text_inputs)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _expand(self, texts: List[str], sizes) -> List[str]:
        out, i = [], 0
        for t in texts:
            parts = t.split(self.image_token)
            pieces = [parts[0]]
            for part in parts[1:]:
                if i >= len(sizes):
                    raise ValueError(f"more {self.image_token} markers than images ({len(sizes)})")
                pieces.append(self.image_token * self.num_image_tokens(sizes[i]) + part)
                i += 1
            out.append("".join(pieces))
        if i != len(sizes):
            raise ValueError(f"{len(sizes)} images but {i} {self.image_token} markers in the text")
        return out

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "image_sizes"]
