"""One module per ``mllm`` subcommand; see ``mllm/app/cli.py``."""
