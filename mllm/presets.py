"""Named model presets (``get_preset(name)``), each a plain ``ModelConfig``.

    tiny                CLIP-style tower (48px tiles, patch 8) + 6-layer Llama (~2.7M params), AnyRes, tiny BPE;
                        random init: trains on a laptop CPU in minutes.
    llava-1.5-7b        CLIP ViT-L/14-336 + Vicuna-7B v1.5, MLP connector, fixed 336px.
    llava-next-7b       the same + AnyRes (LLaVA-NeXT grid pinpoints).
    blip2-opt-2.7b      CLIP ViT-L/14 + 32-query Q-Former + OPT-2.7B (BLIP-2 style).
    siglip-qwen2.5-7b   SigLIP so400m/14-384 + Qwen2.5-7B-Instruct, MLP, AnyRes, ChatML.

Real presets name hub ids (``name_or_path``) *and* carry their architectures (``config``), so
``offline(cfg)`` builds the same shapes with random weights where no hub can be reached (tests, GPU
benchmarks of 7B-shaped models).
"""
from __future__ import annotations

from typing import Callable, Dict

from .config import AnyResConfig, ConnectorConfig, ImageConfig, LLMConfig, ModelConfig, VisionConfig
from .constants import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD
from .registry import Registry

PRESETS: Registry[Callable[[], ModelConfig]] = Registry("preset")


LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SIGLIP_384_PINPOINTS = [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]]

CLIP_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
CLIP_L14_224 = dict(CLIP_L14_336, image_size=224)
SIGLIP_SO400M_384 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                         image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
VICUNA_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
                 rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
QWEN25_7B = dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
                 rms_norm_eps=1e-6, rope_theta=1_000_000.0, bos_token_id=151643, eos_token_id=151645,
                 tie_word_embeddings=False)
OPT_2_7B = dict(model_type="opt", hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=2560,
                do_layer_norm_before=True, bos_token_id=2, eos_token_id=2, pad_token_id=1)

# tiny: the tokenizer's specials are <s>=0, </s>=1, <unk>=2, <pad>=3, <image>=1024
TINY_TOWER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  image_size=48, patch_size=8, hidden_act="quick_gelu")
TINY_LLM = dict(model_type="llama", hidden_size=192, intermediate_size=512, num_hidden_layers=6,
                num_attention_heads=6, num_key_value_heads=2, vocab_size=1025, max_position_embeddings=2048,
                rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, pad_token_id=3, tie_word_embeddings=True)
TINY_PINPOINTS = [[48, 96], [96, 48], [96, 96], [48, 144], [144, 48]]


@PRESETS.register("tiny")
def tiny() -> ModelConfig:
    return ModelConfig(
        name="tiny",
        vision=VisionConfig(kind="hf_clip", config=dict(TINY_TOWER), feature_layer=-2, select_strategy="default"),
        connector=ConnectorConfig(kind="mlp2x_gelu"),
        llm=LLMConfig(config=dict(TINY_LLM), tokenizer="tiny", dtype="float32"),
        anyres=AnyResConfig(enabled=True, grid_pinpoints=[list(p) for p in TINY_PINPOINTS]),
        image=ImageConfig(size=48, mean=CLIP_MEAN, std=CLIP_STD),
        chat_template="vicuna_v1",
        max_length=1024,
    )


@PRESETS.register("llava-1.5-7b")
def llava15_7b() -> ModelConfig:
    return ModelConfig(
        name="llava-1.5-7b",
        vision=VisionConfig(kind="hf_clip", name_or_path="openai/clip-vit-large-patch14-336",
                            config=dict(CLIP_L14_336), feature_layer=-2, select_strategy="default"),
        connector=ConnectorConfig(kind="mlp2x_gelu"),
        llm=LLMConfig(name_or_path="lmsys/vicuna-7b-v1.5", config=dict(VICUNA_7B), dtype="bfloat16"),
        anyres=AnyResConfig(enabled=False),
        image=ImageConfig(size=336, mean=CLIP_MEAN, std=CLIP_STD),
        chat_template="vicuna_v1",
        max_length=2048,
    )


@PRESETS.register("llava-next-7b")
def llava_next_7b() -> ModelConfig:
    cfg = llava15_7b()
    cfg.name = "llava-next-7b"
    cfg.anyres = AnyResConfig(enabled=True, grid_pinpoints=[list(p) for p in LLAVA_NEXT_PINPOINTS])
    cfg.max_length = 4096
    return cfg


@PRESETS.register("blip2-opt-2.7b")
def blip2_opt() -> ModelConfig:
    return ModelConfig(
        name="blip2-opt-2.7b",
        # BLIP-2 drops the tower's last layer and keeps every token, CLS included
        vision=VisionConfig(kind="hf_clip", name_or_path="openai/clip-vit-large-patch14",
                            config=dict(CLIP_L14_224), feature_layer=-2, select_strategy="full"),
        connector=ConnectorConfig(kind="qformer", num_queries=32,
                                  qformer=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                               intermediate_size=3072, cross_attention_frequency=2)),
        llm=LLMConfig(name_or_path="facebook/opt-2.7b", config=dict(OPT_2_7B), dtype="bfloat16"),
        anyres=AnyResConfig(enabled=False),
        image=ImageConfig(size=224, mean=CLIP_MEAN, std=CLIP_STD),
        chat_template="plain",
        max_length=512,
    )


@PRESETS.register("siglip-qwen2.5-7b")
def siglip_qwen() -> ModelConfig:
    return ModelConfig(
        name="siglip-qwen2.5-7b",
        vision=VisionConfig(kind="hf_siglip", name_or_path="google/siglip-so400m-patch14-384",
                            config=dict(SIGLIP_SO400M_384), feature_layer=-2, select_strategy="full"),
        connector=ConnectorConfig(kind="mlp2x_gelu"),
        llm=LLMConfig(name_or_path="Qwen/Qwen2.5-7B-Instruct", config=dict(QWEN25_7B), dtype="bfloat16"),
        anyres=AnyResConfig(enabled=True, grid_pinpoints=[list(p) for p in SIGLIP_384_PINPOINTS]),
        image=ImageConfig(size=384, mean=SIGLIP_MEAN, std=SIGLIP_STD),
        chat_template="chatml",
        max_length=4096,
    )


def get_preset(name: str) -> ModelConfig:
    return PRESETS.get(name)()


def offline(cfg: ModelConfig, tokenizer: str = "tiny") -> ModelConfig:
    """The same architecture with random weights and no hub access (the tokenizer is swapped too)."""
    cfg = cfg.copy()
    cfg.vision.name_or_path = None
    cfg.llm.name_or_path = None
    cfg.llm.tokenizer = tokenizer
    return cfg


def list_presets() -> Dict[str, str]:
    return {k: (PRESETS.get(k).__doc__ or "").strip() for k in PRESETS.keys()}
