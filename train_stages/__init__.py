"""Training stages: align -> multitask -> instruct -> gen (and the tiny preset's encoder pretraining).

    mllm train --stage align --config align.yaml
    torchrun --nproc_per_node 8 -m train_stages.align --config align.yaml
    deepspeed --hostfile hostfile train_stages/instruct.py --config instruct.yaml

Stage specs are data (``train_stages.specs.STAGES``); one runner (``train_stages.runner.run_stage``)
executes them on transformers' Trainer with DeepSpeed ZeRO (``zero2.json``, ``zero3.json``,
``zero3_offload.json``, all "auto" so the training arguments stay the single source of truth).
"""
