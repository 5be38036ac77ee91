"""First contact: loading commands print no bitsandbytes / kernels noise, and chat does not import 4-bit code."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

from ._train_fixtures import make_start, make_world, stage_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = ("Skipping publisher trust check", "gemm_4bit_forward", "kernels-community")


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_chat_prints_no_library_noise_and_imports_no_4bit_code(tmp_path):
    ck = make_start(str(tmp_path))
    code = ("import sys; from mllm.app.cli import main; rc = main(['chat', '--model', sys.argv[1], '--prompt', 'hi', "
            "'--max-new-tokens', '3']); print('4BIT', 'bitsandbytes' in sys.modules, 'peft' in sys.modules); "
            "sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, ck], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not [n for n in NOISE if n in p.stderr], p.stderr[-3000:]
    assert "4BIT False False" in p.stdout


def test_training_prints_no_library_noise(tmp_path):
    data = make_world(str(tmp_path), n_train=8, n_test=2)
    d = stage_dict("align", str(tmp_path / "out"), make_start(str(tmp_path)),
                   os.path.join(data, "captions_train.json"), max_steps=1)
    cfg = tmp_path / "align.yaml"
    cfg.write_text(yaml.safe_dump(d))
    p = subprocess.run([sys.executable, "-m", "train_stages.align", "--config", str(cfg)], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not [n for n in NOISE if n in p.stderr + p.stdout], p.stderr[-3000:]
