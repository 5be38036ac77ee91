"""A LoRA stage killed with SIGKILL mid-training resumes exactly: the LoRA weights and every non-LoRA trainable
(connector, image_newline, a trained tower) end equal to an uninterrupted run, adapters kept or merged
(LLaVA lost its projector on LoRA resume)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ._train_fixtures import make_start, make_world, stage_dict, weights

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lora_resume"))
    return {"data": make_world(root, n_train=24), "start": make_start(root)}


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _config(world, out, merge):
    d = stage_dict("instruct", out, world["start"], os.path.join(world["data"], "vqa_train.json"),
                   per_device_train_batch_size=2, max_steps=STEPS, save_steps=2, merge_lora=merge,
                   modules={"llm": {"mode": "lora"}, "vision": {"mode": "full", "lr": 1e-3},
                            "connector": {"mode": "full", "lr": 1e-3}},
                   lora={"r": 4, "alpha": 8, "dropout": 0.0})
    path = out + ".yaml"
    with open(path, "w") as f:
        yaml.safe_dump(d, f)
    return path


def _train(cfg, *extra):
    return subprocess.Popen([sys.executable, "-m", "train_stages.instruct", "--config", cfg, *extra], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _outputs(path):
    out = weights(path)
    adapter = os.path.join(path, "llm_adapter", "adapter_model.safetensors")
    if os.path.exists(adapter):
        out.update({f"adapter:{k}": v for k, v in load_file(adapter).items()})
    return out


@pytest.mark.parametrize("merge", [False, True])
def test_lora_stage_resumes_exactly_after_sigkill(world, tmp_path, merge):
    ref = str(tmp_path / "ref")
    p = _train(_config(world, ref, merge))
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-3000:]

    run = str(tmp_path / "killed")
    cfg = _config(world, run, merge)
    p = _train(cfg)
    marker = os.path.join(run, "checkpoint-6", "mllm_complete.json")
    deadline = time.time() + 300
    while not os.path.exists(marker) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert os.path.exists(marker), "the run never reached checkpoint-6"
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    assert not os.path.exists(os.path.join(run, "summary.json")), "killed too late: it had finished"

    p = _train(cfg, "--resume", "auto")
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-3000:]
    assert "resume=auto: " in log and "checkpoint-" in log
    a, b = _outputs(ref), _outputs(run)
    assert a.keys() == b.keys()
    if not merge:
        assert any(k.startswith("adapter:") for k in a)
    start = weights(world["start"])
    for prefix in ("connector.", "image_newline", "vision_tower."):  # the non-LoRA trainables moved ...
        keys = [k for k in a if k.startswith(prefix)]
        assert keys and any(not torch.equal(a[k], start[k]) for k in keys), prefix
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst == 0.0, worst  # ... and every tensor equals the uninterrupted run's
