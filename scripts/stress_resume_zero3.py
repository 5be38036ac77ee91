"""Stress the resume path: kill a 2-process ZeRO-3 run with SIGKILL at N random points, resume each, and
count how many end with weights equal to an uninterrupted run. Not a CI test (about a minute per point on
two CPU cores).

    DS_ACCELERATOR=cpu .venv/bin/python scripts/stress_resume_zero3.py --points 10 --seed 0 [--workdir /tmp/stress --reuse]

Each point: start the run (torchrun, 2 ranks, gloo, ZeRO-3, multitask stage on a tiny Shapes world), wait
until a random training step k has been logged plus a random fraction of one step (so some kills land while
a checkpoint is being written), SIGKILL the launcher and both ranks, then ``--resume auto``. Prints one
line per point and ``exact: x/N`` (max abs weight difference 0) and ``within 1e-6: y/N`` at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BIN = os.path.dirname(sys.executable)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _torchrun(cfg, *extra, log=None):
    """Launch the stage; its output goes to ``log`` (a file) when given, else to a pipe for ``communicate``.
    A run that is polled rather than drained must write to a file: a full pipe would block the ranks."""
    cmd = [os.path.join(BIN, "torchrun"), "--nproc_per_node", "2", "--master_port", str(_port()),
           "-m", "train_stages.multitask", "--config", cfg, *extra]
    out = open(log, "w") if log else subprocess.PIPE
    try:
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    finally:
        if log:
            out.close()


def _descendants(pid: int):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_all(proc):
    for pid in [proc.pid] + _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


def _logged_step(out_dir: str) -> int:
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        steps = [json.loads(line).get("step", 0) for line in f if line.strip()]
    return max(steps, default=0)


def _config(world, out, steps):
    import yaml

    from tests._train_fixtures import stage_dict

    d = stage_dict("multitask", out, world["start"], os.path.join(world["data"], "vqa_train.json"),
                   deepspeed="zero3", per_device_train_batch_size=2, max_steps=steps, save_steps=2)
    path = out + ".yaml"
    with open(path, "w") as f:
        yaml.safe_dump(d, f)
    return path


def _max_diff(a_dir, b_dir) -> float:
    from tests._train_fixtures import weights

    a, b = weights(a_dir), weights(b_dir)
    if a.keys() != b.keys():
        return float("inf")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=10)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/tmp/mllm_stress_resume")
    p.add_argument("--reuse", action="store_true", help="keep the world and uninterrupted run already in --workdir")
    args = p.parse_args(argv)

    from tests._train_fixtures import make_start, make_world

    ref = os.path.join(args.workdir, "ref")
    world = {"data": os.path.join(args.workdir, "shapes"), "start": os.path.join(args.workdir, "start")}
    if not (args.reuse and os.path.exists(os.path.join(ref, "summary.json"))):
        shutil.rmtree(args.workdir, ignore_errors=True)
        os.makedirs(args.workdir)
        world = {"data": make_world(args.workdir, n_train=32), "start": make_start(args.workdir)}
        t0 = time.time()
        proc = _torchrun(_config(world, ref, args.steps))
        log, _ = proc.communicate()
        if proc.returncode != 0:
            print(log[-4000:])
            return 1
        print(f"uninterrupted run: {args.steps} steps in {time.time() - t0:.0f}s (incl. start-up)", flush=True)
    with open(os.path.join(ref, "metrics.jsonl")) as f:
        times = [json.loads(line)["time"] for line in f if '"loss"' in line]
    step_time = (times[-1] - times[0]) / max(len(times) - 1, 1)  # training steps only (saves included)
    print(f"one step (with its share of checkpoint saves) takes {step_time:.2f}s", flush=True)

    rng = random.Random(args.seed)
    exact = close = 0
    for i in range(args.points):
        k, frac = rng.randint(1, args.steps - 2), rng.random()
        run = os.path.join(args.workdir, f"kill_{i}")
        shutil.rmtree(run, ignore_errors=True)
        cfg = _config(world, run, args.steps)
        proc = _torchrun(cfg, log=run + ".killed.log")
        while _logged_step(run) < k and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(frac * step_time)
        finished = proc.poll() is not None
        _kill_all(proc)
        ckpts = sorted(d for d in os.listdir(run) if d.startswith("checkpoint-")) if os.path.isdir(run) else []
        proc = _torchrun(cfg, "--resume", "auto")
        log, _ = proc.communicate()
        if proc.returncode != 0:
            print(f"point {i}: killed after step {k} (+{frac:.2f} step): RESUME FAILED\n{log[-2000:]}", flush=True)
            continue
        diff = _max_diff(ref, run)
        exact += diff == 0.0
        close += diff <= 1e-6
        print(f"point {i}: killed after step {k} (+{frac:.2f} step){' (had finished)' if finished else ''}, "
              f"checkpoints on disk {ckpts}; max abs weight diff after resume {diff:.3g}", flush=True)
    print(f"exact: {exact}/{args.points}  within 1e-6: {close}/{args.points}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
