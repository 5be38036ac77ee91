"""Constants every layer shares, defined once: the image placeholder, CLIP/SigLIP normalisation, the pixel
limit. Plain values only (no imports), so anything may import this module.

    from mllm.constants import IMAGE_TOKEN, CLIP_MEAN, CLIP_STD, MAX_IMAGE_PIXELS
"""
from __future__ import annotations

# The placeholder for one image in a conversation: a real added special token of the tokenizer, expanded
# to that image's run of feature positions before the LLM sees it.
IMAGE_TOKEN = "<image>"

# OpenAI CLIP's RGB normalisation (0-1 scale), what CLIP towers and LLaVA's image processors use
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# decompression-bomb guard for loaded images: PIL's own default limit
MAX_IMAGE_PIXELS = 89_478_485
