"""Make torchvision importable on a CPU-only torch (test/CI environments only).

The registry only has the CUDA build of torchvision; on a CPU torch its import fails while registering
C++ operators (``operator torchvision::nms does not exist``), which in turn breaks timm, open_clip and even
transformers. Registering two empty modules before torchvision is imported lets its Python parts load
(only the C++ ops such as nms stay unavailable). This script writes a ``.pth`` hook that does that into
the site-packages of the interpreter that runs it. It is part of the environment setup, never of mllm's
import path, and it does nothing when torch has CUDA.

    .venv/bin/python scripts/cpu_torchvision_shim.py
"""
import pathlib
import site
import sys

import torch

HOOK = (
    "import sys, types\n"
    "for _n in ('torchvision._meta_registrations', 'torchvision._autograd_registrations'):\n"
    "    sys.modules.setdefault(_n, types.ModuleType(_n))\n"
)


def main() -> int:
    target = pathlib.Path(site.getsitepackages()[0])
    if torch.version.cuda is not None:
        print(f"torch {torch.__version__} has CUDA; no torchvision shim needed")
        return 0
    (target / "_mllm_cpu_torchvision_shim.py").write_text(HOOK)
    (target / "_mllm_cpu_torchvision_shim.pth").write_text("import _mllm_cpu_torchvision_shim\n")
    print(f"installed CPU torchvision shim into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
