"""Stage 2, multitask: connector + LLM (full or LoRA) on a VQA/caption mixture; the tower optionally unfrozen with its own LR; ZeRO-3.

    python -m train_stages.multitask --config multitask.yaml [--set key=value ...] [--resume auto]
    torchrun --nproc_per_node 2 -m train_stages.multitask --config multitask.yaml
    deepspeed --num_gpus 8 train_stages/multitask.py --config multitask.yaml
    mllm train --stage multitask --config multitask.yaml
"""
import os
import sys

if __package__ in (None, ""):  # run as a file by the deepspeed launcher
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train_stages.cli import stage_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(stage_main("multitask"))
