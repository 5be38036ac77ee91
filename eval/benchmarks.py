"""The benchmark registry: every benchmark the ``mllm eval`` command runs, behind one interface.

    from eval.benchmarks import BENCHMARKS
    bench = BENCHMARKS.get("mmbench")                    # unknown names list the known ones
    rows = bench.load("MMBench_DEV_EN.tsv", options)     # options: the command's benchmark options
    outcome = bench.predict(generator, rows, "out/", batch_size=8)   # eval.runner.run_predictions
    result = bench.score(rows, {key: response}, options, source="model ckpt")
    bench.write(rows, result, "out/"); print(bench.table(result)); bench.run_info(result, options)

A benchmark is a value (``Benchmark``): how to load its data and other tools' prediction files, how to run a
model on it, how to score, what to write. ``mllm eval NAME`` takes one path for all of them; adding a
benchmark is adding an entry here (and its loaders, prompts and scoring in its own subpackage).
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Mapping

from data_pipelines.mmbench.prompt import PROMPT_VERSION as MMBENCH_PROMPT_VERSION
from eval.mmbench.data import load_mmbench_tsv, load_predictions
from eval.mmbench.score import format_mmbench_table, score_mmbench, write_mmbench_outputs
from eval.mmmu.data import load_mmmu
from eval.mmmu.prompt import PROMPT_VERSION as MMMU_PROMPT_VERSION
from eval.mmmu.score import format_mmmu_table, load_mmmu_predictions, score_mmmu, write_mmmu_outputs
from mllm.registry import Registry

Options = Mapping[str, Any]  # the command's benchmark options (e.g. MMMU's split and seed)


@dataclass(frozen=True)
class Benchmark:
    name: str
    help: str
    description: str
    predictions_help: str
    prompt_version: str
    key: Callable[[Any], Hashable]  # a prediction key as the benchmark stores it (int index, str id)
    load: Callable[[str, Options], Any]  # (data path, options) -> rows
    load_predictions: Callable[[str], Dict[Hashable, str]]  # another tool's predictions file
    # "module:function" of (generator, rows, out_dir, **run_predictions kwargs) -> RunOutcome, imported by
    # ``predict`` on first use: it brings in torch and the model stack, which scoring and ``mllm --help`` need not
    predictor: str
    score: Callable[..., Any]  # (rows, predictions, options, source=) -> result
    write: Callable[[Any, Any, str], Any]  # (rows, result, out_dir)
    table: Callable[[Any], str]
    run_info: Callable[[Any, Options], Dict[str, Any]]  # run_info.json extras
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None

    def predict(self, generator: Any, rows: Any, out_dir: str, **kwargs: Any) -> Any:
        module, _, function = self.predictor.partition(":")
        return getattr(importlib.import_module(module), function)(generator, rows, out_dir, **kwargs)


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def _mmmu_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default=None, help="dev | validation | test (default: every row found)")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the per-question random letter for unreadable multiple-choice responses")


BENCHMARKS.add("mmbench", Benchmark(
    name="mmbench", help="MMBench TSV, CircularEval + vanilla accuracy",
    description="Run a model on MMBench, or score predictions, with VLMEvalKit's exact matching and CircularEval.",
    predictions_help="predictions as .tsv, .xlsx or .jsonl with columns index, prediction",
    prompt_version=MMBENCH_PROMPT_VERSION, key=int,
    load=lambda path, options: load_mmbench_tsv(path),
    load_predictions=load_predictions,
    predictor="eval.mmbench.run:predict_mmbench",
    score=lambda rows, predictions, options, source: score_mmbench(rows, predictions, source=source),
    write=write_mmbench_outputs,
    table=format_mmbench_table,
    run_info=lambda result, options: {"counts": result.counts, "missing_prediction_indices": result.missing,
                                      "orphan_row_indices": result.orphans},
))

BENCHMARKS.add("mmmu", Benchmark(
    name="mmmu", help="MMMU parquet / datasets folder, official parsing",
    description="Run a model on MMMU, or score responses, with the official MMMU parsing and matching.",
    predictions_help="official output JSON: {question id: response}",
    prompt_version=MMMU_PROMPT_VERSION, key=str,
    load=lambda path, options: load_mmmu(path, split=options.get("split")),
    load_predictions=load_mmmu_predictions,
    predictor="eval.mmmu.run:predict_mmmu",
    score=lambda rows, predictions, options, source: score_mmmu(rows, predictions, seed=options["seed"],
                                                                source=source),
    write=lambda rows, result, out_dir: write_mmmu_outputs(result, out_dir),
    table=format_mmmu_table,
    run_info=lambda result, options: {"split": options.get("split"), "seed": options.get("seed"),
                                      "counts": result.counts, "missing_prediction_ids": result.missing},
    add_arguments=_mmmu_arguments,
))
