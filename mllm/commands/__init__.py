"""One module per ``mllm`` subcommand; see ``mllm/cli.py``."""
