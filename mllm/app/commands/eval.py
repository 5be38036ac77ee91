"""``mllm eval``: run a checkpoint on MMBench (CircularEval) or MMMU, or score existing predictions.

    mllm eval mmbench --data MMBench_DEV_EN.tsv --model ckpt --out runs/mmbench [--batch-size 8
                      --max-new-tokens 16 --device cpu|cuda --bf16 --overwrite --strict]
    mllm eval mmmu --data MMMU/ --split validation --model ckpt --out runs/mmmu [...]
    torchrun --nproc_per_node 4 -m mllm.app.cli eval mmbench --data ... --model ckpt --out runs/mmbench
    mllm eval mmbench --data MMBench_DEV_EN.tsv --predictions preds.tsv --out runs/mmbench

``--model CKPT`` loads the checkpoint (``MultimodalLM.from_pretrained``), builds each question's prompt in
the model's chat template and generates greedily in left-padded batches (``eval/runner.py``); the answers
are appended per batch to ``OUT/raw_predictions.jsonl`` (per-rank part files under torchrun, merged by
rank 0), so a rerun after a crash continues where it stopped. ``--overwrite`` starts over. They then take
the same scoring path as ``--predictions FILE`` (MMBench: TSV, XLSX or JSONL with ``index, prediction``;
MMMU: the official JSON ``{id: response}``). The output directory gets ``scores.json`` (when the data has
answers), the per-row file (``predictions.tsv`` / ``predictions.jsonl``), MMMU's ``submission.json`` for
rows with hidden answers, and ``run_info.json`` (model path, data sha256, prompt version, generation
settings, package versions).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, Mapping, Optional, Union

from eval.benchmarks import BENCHMARKS, Benchmark
from eval.report import sha256_of, write_run_info

NAME = "eval"
HELP = "run a model on MMBench or MMMU, or score existing predictions"
DESCRIPTION = __doc__


def _setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    if not logging.getLogger().handlers:
        logging.basicConfig(format=f"[rank{rank}] %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mllm").setLevel(level)


def _options(args: argparse.Namespace) -> Dict[str, Any]:
    """The benchmark-specific options of the command line (MMMU: split, seed)."""
    return {k: getattr(args, k) for k in ("split", "seed") if hasattr(args, k)}


def load_eval_model(path: str, device: str = "cpu", bf16: bool = False):
    """Our checkpoint, or a transformers Llava / LlavaNext directory (our export, a llava-hf checkpoint)
    read through ``mllm import``'s converter, so both are prompted and decoded by the same harness."""
    from eval.runner import load_model  # lazy: CLI start-up
    from mllm.config import CONFIG_NAME  # lazy: CLI start-up

    if os.path.isfile(os.path.join(path, CONFIG_NAME)) or not os.path.isfile(os.path.join(path, "config.json")):
        return load_model(path, device=device, bf16=bf16)
    import torch

    from ..export.importer import import_llava  # lazy: CLI start-up

    logging.getLogger("mllm.eval").info("%s is a transformers checkpoint: converting it in memory", path)
    model = import_llava(path)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here")
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    model = model.to(device)
    return (model.to(torch.bfloat16) if bf16 else model).eval()


def run_model_predictions(args: argparse.Namespace, rows: Any = None) -> Optional[Mapping[Union[int, str], str]]:
    """Predictions of the checkpoint ``args.model`` on ``rows`` (loaded from ``args.data`` when None):
    ``{index or id: response}`` on rank 0, None on the other ranks (they have nothing left to do).

    Generation details (settings, rate, rows that could not be run) are left in ``args._generation`` for
    ``run_info.json``; the distributed context in ``args._dist`` (``run`` tears it down).
    """
    # here, not at the top: the runner imports torch and the model stack, which `mllm --help` and scoring
    # someone else's predictions do not need (CLI start-up time)
    from eval.runner import BatchGenerator, init_distributed, model_fingerprint

    bench: Benchmark = BENCHMARKS.get(args.benchmark)
    ctx = init_distributed()
    args._dist = ctx
    _setup_logging(ctx.rank)
    if rows is None:
        rows = bench.load(args.data, _options(args))
    model = load_eval_model(args.model, device=args.device, bf16=args.bf16)
    generator = BatchGenerator(model, max_new_tokens=args.max_new_tokens)
    dtype = str(model.llm.get_input_embeddings().weight.dtype).replace("torch.", "")
    # what must match for a rerun to resume this directory's predictions (batch size and ranks need not)
    fingerprint = {"benchmark": args.benchmark, "model": model_fingerprint(args.model),
                   "data_sha256": sha256_of(args.data), "split": getattr(args, "split", None),
                   "prompt_version": bench.prompt_version, "chat_template": generator.template_name,
                   "max_new_tokens": args.max_new_tokens, "dtype": dtype}
    outcome = bench.predict(generator, rows, args.out, batch_size=args.batch_size, ctx=ctx,
                            fingerprint=fingerprint, overwrite=args.overwrite, strict=args.strict)
    args._generation = {"chat_template": generator.template_name, "dtype": dtype, "device": str(model.device),
                        **outcome.stats, "row_errors": {str(k): v for k, v in outcome.errors.items()}}
    if outcome.errors:
        logging.getLogger("mllm.eval").warning(
            "%d row(s) could not be run and count as wrong (see run_info.json row_errors), e.g. %s",
            len(outcome.errors), next(iter(outcome.errors.items())))
    return outcome.predictions


def _add_common(p: argparse.ArgumentParser, predictions_help: str) -> None:
    p.add_argument("--data", required=True, help="benchmark data file or folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help=predictions_help)
    source.add_argument("--model", help="checkpoint directory to run (mllm save_pretrained layout)")
    p.add_argument("--out", required=True, help="output directory")
    g = p.add_argument_group("running a model (--model)")
    g.add_argument("--batch-size", type=int, default=8, help="questions per generate call (default: 8)")
    g.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per answer (default: 16)")
    g.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (under torchrun, cuda = the local rank's GPU)")
    g.add_argument("--bf16", action="store_true", help="cast the model to bfloat16")
    g.add_argument("--overwrite", action="store_true",
                   help="discard predictions already in --out instead of resuming them")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first row that cannot be run (default: count it as wrong and go on)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in BENCHMARKS.keys():
        bench = BENCHMARKS.get(name)
        p = sub.add_parser(name, help=bench.help, description=bench.description)
        _add_common(p, bench.predictions_help)
        bench.add_arguments(p)


def run_benchmark(args: argparse.Namespace) -> int:
    """One path for every registered benchmark: load, predict (or read predictions), score, write."""
    bench: Benchmark = BENCHMARKS.get(args.benchmark)
    options = _options(args)
    rows = bench.load(args.data, options)
    if args.predictions:
        predictions = bench.load_predictions(args.predictions)
        source = args.predictions
    else:
        ran = run_model_predictions(args, rows)
        if ran is None:
            return 0  # not rank 0: rank 0 scores the merged predictions
        predictions = {bench.key(k): v for k, v in ran.items()}
        source = f"model {args.model}"
    result = bench.score(rows, predictions, options, source=source)
    bench.write(rows, result, args.out)
    write_run_info(args.out, benchmark=bench.name, data_path=args.data, prompt_version=bench.prompt_version,
                   predictions_path=args.predictions, model_path=args.model,
                   extra={**bench.run_info(result, options), **_generation_info(args)})
    print(bench.table(result))
    print(f"wrote {args.out}")
    return 0


def _generation_info(args: argparse.Namespace) -> Dict[str, Any]:
    """run_info.json fields of a model run: generation settings, rate, rows that could not be run."""
    if getattr(args, "_generation", None) is None:
        return {}
    gen = dict(args._generation)
    return {"generation": gen, "row_errors": gen.pop("row_errors")}


def run(args: argparse.Namespace) -> int:
    code = run_benchmark(args)
    ctx = getattr(args, "_dist", None)
    if ctx is not None and ctx.owns_group:
        from eval.distributed import shutdown_distributed  # imported where the group was made (see above)

        shutdown_distributed(ctx)
        # gloo sometimes aborts in its exit-time destructors after all work is done; leaving without
        # them keeps the exit status honest
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
