"""Stage 3, instruction tuning: multi-turn conversations; LLM full, LoRA or QLoRA (4-bit bitsandbytes via peft); ZeRO-3.

    python -m train_stages.instruct --config instruct.yaml [--set key=value ...] [--resume auto]
    torchrun --nproc_per_node 2 -m train_stages.instruct --config instruct.yaml
    deepspeed --num_gpus 8 train_stages/instruct.py --config instruct.yaml
    mllm train --stage instruct --config instruct.yaml
"""
import os
import sys

if __package__ in (None, ""):  # run as a file by the deepspeed launcher
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train_stages.cli import stage_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(stage_main("instruct"))
