"""One module per ``mllm`` subcommand; see ``mllm/app/cli.py``.

``mllm --help`` imports every module here to build its parser, so a command imports what it runs (torch,
transformers, the model stack) inside ``run``, not at the top: those imports are the only function-local
first-party imports of the application layer, each marked "lazy: CLI start-up".
"""
