"""Shared entry point of the per-stage scripts: parse --config/--set/--resume, run, exit cleanly."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def add_arguments(p: argparse.ArgumentParser, stage: Optional[str] = None) -> None:
    if stage is None:
        p.add_argument("--stage", required=True, help="align | multitask | instruct | gen | encoder | text")
    p.add_argument("--config", required=True, help="training config YAML (see README: Training)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set max_steps=100 --set modules.llm.mode=lora")
    p.add_argument("--resume", help="'auto' (latest complete checkpoint in output_dir) or a checkpoint directory")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher


def run(args, stage: Optional[str] = None) -> int:
    import torch.distributed as dist

    from mllm.console import quiet_library_noise  # lazy: CLI start-up, as below

    quiet_library_noise()

    from .specs import TrainConfig  # lazy: `mllm --help` builds this parser (CLI start-up)

    stage = stage or args.stage
    overrides: List[str] = list(args.overrides)
    if args.resume:
        overrides.append(f"resume={args.resume}")
    if stage in ("encoder", "text"):  # the tiny preset's pretraining steps: their own flat configs
        import yaml

        from mllm import typed  # lazy: CLI start-up, as above

        from .encoder_pretrain import EncoderPretrainConfig, pretrain_encoder  # lazy: CLI start-up, as above
        from .text_pretrain import TextPretrainConfig, text_pretrain  # lazy: CLI start-up, as above

        with open(args.config) as f:
            data = yaml.safe_load(f) or {}
        if data.pop("stage", stage) != stage:
            raise ValueError(f"{args.config} is not a {stage}-pretraining config (its stage is not {stage!r})")
        data = typed.apply_overrides(data, args.overrides)
        if stage == "encoder":
            pretrain_encoder(typed.from_dict(EncoderPretrainConfig, data, where=args.config))
        else:
            text_pretrain(typed.from_dict(TextPretrainConfig, data, where=args.config))
        return 0
    cfg = TrainConfig.load(args.config, overrides, stage=stage)
    from .runner import run_stage  # lazy: CLI start-up, as above

    run_stage(cfg)
    # only under a launcher (torchrun / deepspeed): never end a process that merely called us in-process
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        # two-process gloo runs sometimes abort in their exit-time destructors after all work is done, which
        # would turn a finished stage into a failed exit status: leave now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def stage_main(stage: str, argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"train_stages.{stage}", description=f"Run the {stage} stage.")
    add_arguments(p, stage)
    return run(p.parse_args(argv), stage)
