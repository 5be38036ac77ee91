"""Stage 1, pretraining alignment: vision tower and LLM frozen, the connector learns on captions (plain template), ZeRO-2.

    python -m train_stages.align --config align.yaml [--set key=value ...] [--resume auto]
    torchrun --nproc_per_node 2 -m train_stages.align --config align.yaml
    deepspeed --num_gpus 8 train_stages/align.py --config align.yaml
    mllm train --stage align --config align.yaml
"""
import os
import sys

if __package__ in (None, ""):  # run as a file by the deepspeed launcher
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train_stages.cli import stage_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(stage_main("align"))
