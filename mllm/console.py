"""What the command line prints: only what the user should act on.

Two libraries log at WARNING on import when nothing is wrong: bitsandbytes' CPU backend ("Failed to load
CPU gemm_4bit_forward from kernels-community ...": it falls back to its own kernel) and the ``kernels``
package it asks ("Skipping publisher trust check ... offline mode"). transformers' Trainer imports peft,
which imports bitsandbytes whenever it is installed, so these lines appeared before every command. The
entry points quiet exactly those two loggers; everything else still reaches the console.

    from mllm.console import quiet_library_noise; quiet_library_noise()
"""
from __future__ import annotations

import logging
import random

NOISY_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")


def quiet_library_noise() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def seed_everything(seed: int) -> None:
    """random / numpy / torch seeds (transformers.set_seed imports the Trainer's stack, peft included)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
