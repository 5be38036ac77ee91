"""``mllm train --stage NAME --config FILE``: run one training stage (see train_stages/)."""
from __future__ import annotations

NAME = "train"
HELP = "run a training stage (encoder | text | align | multitask | instruct | gen)"
DESCRIPTION = """Run a training stage from a YAML config.

  mllm train --stage align --config align.yaml
  mllm train --stage instruct --config instruct.yaml --set modules.llm.mode=lora --resume auto
  mllm train --stage gen --config gen.yaml    # the image-generation head, on an instruct-stage model
  torchrun --nproc_per_node 2 -m train_stages.multitask --config multitask.yaml   # several processes
"""


def add_arguments(p):
    from train_stages.cli import add_arguments as add  # lazy: CLI start-up (see commands/__init__.py)

    add(p)


def run(args) -> int:
    from train_stages.cli import run as run_stage  # lazy: CLI start-up (see commands/__init__.py)

    return run_stage(args)
