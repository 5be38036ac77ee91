"""``mllm data``: make and inspect datasets.

    mllm data make-shapes --out data/shapes                    # 2000 train / 200 test images, seed 0
    mllm data make-shapes --out /tmp/s --seed 3 --train 100 --test 20 --overwrite
    mllm data check data/llava_665k.json data/chat.jsonl --preset llava-1.5-7b --tokenizer ./vicuna-7b
    mllm data preview data/shapes/vqa_train.json --index 3 --model runs/align

See ``data_pipelines/shapes/__init__.py`` for what is written.
"""
from __future__ import annotations

import argparse

NAME = "data"
HELP = "make datasets (the Shapes world), check them, preview a record as the model will see it"
DESCRIPTION = """Make datasets.

  mllm data make-shapes --out DIR [--seed N --train N --test N] [--overwrite]
      Generate the Shapes world into DIR: images, scene metadata, LLaVA JSON for the three training
      stages (captions, VQA, instructions), MMBench TSVs and MMMU parquets built from the test images,
      and manifest.json. The same seed gives the same bytes.

  mllm data check FILE... [--preset NAME | --model CKPT] [--tokenizer DIR] [--template NAME] [--json OUT]
      For each file: the detected format, records read, records skipped by reason with examples, and a
      token-length histogram under the preset's (or checkpoint's) template, tokenizer and image geometry,
      exactly as training would build them.

  mllm data preview FILE --index N [--preset NAME | --model CKPT]
      The N-th usable record as training text: supervised tokens between ⟦ ⟧, image-token runs as
      <image ×N>."""


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

    c = sub.add_parser("check", help="formats, counts, skips by reason, token-length histogram")
    c.add_argument("files", nargs="+", help="data files or HF dataset directories")
    _add_model_args(c)
    c.add_argument("--limit", type=int, default=None, help="read at most N records per file")
    c.add_argument("--json", default=None, help="also write the report as JSON here")
    c.set_defaults(_data_run=_check)

    v = sub.add_parser("preview", help="one record as training text, targets and image tokens marked")
    v.add_argument("file")
    v.add_argument("--index", type=int, default=0, help="which usable record (default: 0)")
    _add_model_args(v)
    v.set_defaults(_data_run=_preview)
    parser.set_defaults(_data_parser=parser)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="preset whose template/tokenizer/geometry to use (default tiny)")
    p.add_argument("--model", default=None, help="an mllm checkpoint instead of a preset (its config and tokenizer)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or hub id (default: the preset's)")
    p.add_argument("--template", default=None, help="chat template (default: the model's; `plain` for align)")
    p.add_argument("--max-length", type=int, default=None, help="default: the model's max_length")
    p.add_argument("--format", default="auto", help="data format (default: auto-detected)")
    p.add_argument("--image-root", default=None, help="directory relative image paths start from")


def _builder(args: argparse.Namespace):
    from data_pipelines.check import builder_for_config  # lazy: CLI start-up
    from mllm.config import ModelConfig  # lazy: CLI start-up
    from mllm.presets import get_preset  # lazy: CLI start-up
    from mllm.tokenizer import load_tokenizer  # lazy: CLI start-up

    if args.model:
        cfg = ModelConfig.load(args.model)
        source = args.tokenizer or args.model
    else:
        cfg = get_preset(args.preset)
        source = args.tokenizer or cfg.llm.tokenizer or cfg.llm.name_or_path
    return builder_for_config(cfg, load_tokenizer(source), template=args.template, max_length=args.max_length)


def _check(args: argparse.Namespace) -> int:
    import json

    from data_pipelines.check import check_files, format_check  # lazy: CLI start-up

    report = check_files(args.files, _builder(args), format=args.format, image_root=args.image_root,
                         limit=args.limit)
    print(format_check(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if all(f["usable"] for f in report["files"]) else 1


def _preview(args: argparse.Namespace) -> int:
    from data_pipelines.check import preview_record  # lazy: CLI start-up
    from data_pipelines.formats import read_records  # lazy: CLI start-up
    from data_pipelines.records import RecordError, SkipStats  # lazy: CLI start-up

    builder = _builder(args)
    stats = SkipStats()
    usable = 0
    for rec in read_records(args.file, args.format, stats=stats, image_root=args.image_root):
        try:
            text = preview_record(rec, builder)
        except RecordError as err:
            stats.skip(err)
            continue
        if usable == args.index:
            print(text)
            return 0
        usable += 1
    print(f"{args.file}: only {usable} usable record(s) ({stats.summary()}); --index {args.index} is past the end")
    return 1


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
