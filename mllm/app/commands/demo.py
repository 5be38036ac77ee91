"""``mllm demo``: the embedded default end to end (see mllm/app/demo.py)."""
from __future__ import annotations

NAME = "demo"
HELP = "train the tiny model on the Shapes world through every stage and evaluate it"
DESCRIPTION = """Run the embedded default end to end on this machine's CPU:
make the Shapes world -> encoder pretraining -> align -> multitask -> instruct -> MMBench CircularEval.

  mllm demo --out demo_out
  mllm demo --out /tmp/smoke --quick     # a few steps per stage, to check the pipeline
"""


def add_arguments(p):
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny data, a few steps per stage")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    import logging

    from mllm.app.demo import QUICK, DemoPlan, run_demo  # lazy: CLI start-up (see commands/__init__.py)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    plan = QUICK if args.quick else DemoPlan()
    plan.seed = args.seed
    run_demo(args.out, plan)
    return 0
