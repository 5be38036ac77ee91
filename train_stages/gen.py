"""The gen stage: only the image-generation head (MetaQuery queries, gen connector, DiT) learns, on prompt/image
pairs; vision tower, connector and LLM stay frozen, so the model answers exactly as before. ZeRO-2.

    python -m train_stages.gen --config gen.yaml [--set key=value ...] [--resume auto]
    torchrun --nproc_per_node 2 -m train_stages.gen --config gen.yaml
    mllm train --stage gen --config gen.yaml

The config names the instruct stage's output as ``init_from`` and gen_train.json files as ``data``
(``mllm data make-shapes`` + ``data_pipelines.shapes.gen.make_gen_data`` for the Shapes world); a model
without a head gets a fresh one from ``gen_head`` (e.g. ``{num_queries: 16, dit: tiny}``).
"""
import os
import sys

if __package__ in (None, ""):  # run as a file by the deepspeed launcher
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train_stages.cli import stage_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(stage_main("gen"))
