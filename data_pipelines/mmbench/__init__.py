"""The MMBench question format, shared by the data that trains on it and the harness that scores it.

``prompt`` builds VLMEvalKit's multiple-choice prompt from a row; ``extract`` is VLMEvalKit's exact answer
matching (letter, then option text). The Shapes world (``data_pipelines.shapes``) writes its training
questions and checks its answers with them, and ``eval.mmbench`` runs and scores the benchmark with the
same two modules, so a model is trained on exactly the format it is evaluated in.
"""
