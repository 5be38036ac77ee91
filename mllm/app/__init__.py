"""The application layer: the ``mllm`` command line and what only applications do.

    mllm --help                          # mllm.app.cli; one module per subcommand in mllm.app.commands
    from mllm.app.chat import ChatSession, load_backend
    from mllm.app.export import export_model

``cli`` / ``commands`` (the subcommands), ``chat`` (sessions, backends, the REPL), ``export`` (native and
remote-code transformers checkpoints, import, verification), ``demo`` / ``demo_gen`` (the end-to-end run
on the Shapes world). This is the only layer that may import every other one (``train_stages``, ``eval``,
``data_pipelines``, the ``mllm`` core, ``connectors``); nothing below imports it.
"""
