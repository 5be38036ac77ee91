"""``mllm eval``: score MMBench (CircularEval) or MMMU predictions, the way the reference tools do.

    mllm eval mmbench --data MMBench_DEV_EN.tsv --predictions preds.tsv --out runs/mmbench
    mllm eval mmmu --data MMMU/ --split validation --predictions output.json --out runs/mmmu

``--predictions`` scores an existing file (MMBench: TSV, XLSX or JSONL with ``index, prediction``;
MMMU: the official JSON ``{id: response}``). ``--model CKPT`` will run a checkpoint first; its
predictions then take the same scoring path. The output directory gets ``scores.json`` (when the data
has answers), the per-row file (``predictions.tsv`` / ``predictions.jsonl``), MMMU's ``submission.json``
for rows with hidden answers, and ``run_info.json`` (data sha256, prompt version, package versions).
"""
from __future__ import annotations

import argparse
from typing import Dict, Mapping, Union

from mllm.registry import Registry

NAME = "eval"
HELP = "score MMBench or MMMU predictions (model runs come later)"
DESCRIPTION = __doc__

BENCHMARKS: Registry = Registry("benchmark")


class ModelRunNotAvailable(NotImplementedError, ValueError):
    """Running a checkpoint inside ``mllm eval`` is not built yet (a ValueError so the CLI prints one line)."""


def run_model_predictions(args: argparse.Namespace) -> Mapping[Union[int, str], str]:
    """Predictions of the checkpoint ``args.model`` on ``args.data``: ``{index or id: response}``.

    The hook for batched inference; everything after it (scoring, reports) is already shared with
    ``--predictions``.
    """
    raise ModelRunNotAvailable(
        f"running a model (--model {args.model}) is not available yet; generate predictions and pass "
        "them with --predictions FILE")


def _add_common(p: argparse.ArgumentParser, predictions_help: str) -> None:
    p.add_argument("--data", required=True, help="benchmark data file or folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help=predictions_help)
    source.add_argument("--model", help="checkpoint directory to run (not available yet)")
    p.add_argument("--out", required=True, help="output directory")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    p = sub.add_parser("mmbench", help="MMBench TSV, CircularEval + vanilla accuracy",
                       description="Score MMBench predictions with VLMEvalKit's exact matching and CircularEval.")
    _add_common(p, "predictions as .tsv, .xlsx or .jsonl with columns index, prediction")
    p = sub.add_parser("mmmu", help="MMMU parquet / datasets folder, official parsing",
                       description="Score MMMU responses with the official MMMU parsing and matching.")
    _add_common(p, "official output JSON: {question id: response}")
    p.add_argument("--split", default=None, help="dev | validation | test (default: every row found)")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the per-question random letter for unreadable multiple-choice responses")


@BENCHMARKS.register("mmbench")
def _run_mmbench(args: argparse.Namespace) -> int:
    from eval.mmbench.data import load_mmbench_tsv, load_predictions
    from eval.mmbench.prompt import PROMPT_VERSION
    from eval.mmbench.score import format_mmbench_table, score_mmbench, write_mmbench_outputs
    from eval.report import write_run_info

    data = load_mmbench_tsv(args.data)
    if args.predictions:
        predictions: Dict[int, str] = load_predictions(args.predictions)
        source = args.predictions
    else:
        predictions = {int(k): v for k, v in run_model_predictions(args).items()}
        source = f"model {args.model}"
    result = score_mmbench(data, predictions, source=source)
    write_mmbench_outputs(data, result, args.out)
    write_run_info(args.out, benchmark="mmbench", data_path=args.data, prompt_version=PROMPT_VERSION,
                   predictions_path=args.predictions, model_path=args.model,
                   extra={"counts": result.counts, "missing_prediction_indices": result.missing,
                          "orphan_row_indices": result.orphans})
    print(format_mmbench_table(result))
    print(f"wrote {args.out}")
    return 0


@BENCHMARKS.register("mmmu")
def _run_mmmu(args: argparse.Namespace) -> int:
    from eval.mmmu.data import load_mmmu
    from eval.mmmu.prompt import PROMPT_VERSION
    from eval.mmmu.score import format_mmmu_table, load_mmmu_predictions, score_mmmu, write_mmmu_outputs
    from eval.report import write_run_info

    rows = load_mmmu(args.data, split=args.split)
    if args.predictions:
        predictions: Dict[str, str] = load_mmmu_predictions(args.predictions)
        source = args.predictions
    else:
        predictions = {str(k): v for k, v in run_model_predictions(args).items()}
        source = f"model {args.model}"
    result = score_mmmu(rows, predictions, seed=args.seed, source=source)
    write_mmmu_outputs(result, args.out)
    write_run_info(args.out, benchmark="mmmu", data_path=args.data, prompt_version=PROMPT_VERSION,
                   predictions_path=args.predictions, model_path=args.model,
                   extra={"split": args.split, "seed": args.seed, "counts": result.counts,
                          "missing_prediction_ids": result.missing})
    print(format_mmmu_table(result))
    print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    return BENCHMARKS.get(args.benchmark)(args)
