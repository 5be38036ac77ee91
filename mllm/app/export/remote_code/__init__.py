"""Source files ``mllm export`` copies into remote-code exports (not imported by mllm itself).

They run inside transformers (``trust_remote_code=True``) with transformers 4.57 and 5.x and import nothing
from mllm; being a package only makes setuptools install them with mllm. See ``mllm/app/export/remote.py``.
"""
