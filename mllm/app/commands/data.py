"""``mllm data``: make datasets. One subcommand so far, ``make-shapes`` (the embedded Shapes world).

    mllm data make-shapes --out data/shapes                    # 2000 train / 200 test images, seed 0
    mllm data make-shapes --out /tmp/s --seed 3 --train 100 --test 20 --overwrite

See ``data_pipelines/shapes/__init__.py`` for what is written.
"""
from __future__ import annotations

import argparse

NAME = "data"
HELP = "make datasets (the embedded Shapes world)"
DESCRIPTION = """Make datasets.

  mllm data make-shapes --out DIR [--seed N --train N --test N] [--overwrite]
      Generate the Shapes world into DIR: images, scene metadata, LLaVA JSON for the three training
      stages (captions, VQA, instructions), MMBench TSVs and MMMU parquets built from the test images,
      and manifest.json. The same seed gives the same bytes."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from data_pipelines.shapes import DEFAULT_TEST, DEFAULT_TRAIN  # lazy: CLI start-up (see commands/__init__.py)

    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = sub.add_parser("make-shapes", help="generate the Shapes world dataset",
                       description="Generate the Shapes world dataset (deterministic for a seed).")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--train", type=int, default=DEFAULT_TRAIN,
                   help=f"number of train images (default: {DEFAULT_TRAIN})")
    p.add_argument("--test", type=int, default=DEFAULT_TEST,
                   help=f"number of test images (default: {DEFAULT_TEST})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace Shapes output already in --out (other files there are kept)")
    p.set_defaults(_data_run=_make_shapes)
    parser.set_defaults(_data_parser=parser)


def _make_shapes(args: argparse.Namespace) -> int:
    from data_pipelines.shapes import make_shapes  # lazy: CLI start-up (see commands/__init__.py)

    manifest = make_shapes(args.out, seed=args.seed, n_train=args.train, n_test=args.test,
                           overwrite=args.overwrite)
    files = manifest["files"]
    print(f"Shapes world (seed {manifest['seed']}) written to {args.out}: "
          f"{files['images/train']['images']} train and {files['images/test']['images']} test images; "
          f"{files['captions_train.json']['records']} captions, {files['vqa_train.json']['records']} VQA, "
          f"{files['instruct_train.json']['records']} instruction records; "
          f"MMBench dev {files['mmbench_dev.tsv']['questions']} questions "
          f"({files['mmbench_dev.tsv']['rows']} rows with circular variants); "
          f"MMMU validation {files['mmmu_validation.parquet']['records']} questions.")
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "_data_run", None) is None:
        args._data_parser.print_help()
        return 2
    return args._data_run(args)
