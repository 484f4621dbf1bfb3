"""Coverage-guided fuzzing (atheris) of every parser that reads bytes from outside.

``python -m fuzz --seconds N [--target T]`` runs each target in its own subprocess; see
:mod:`fuzz.runner`. The targets live in :mod:`fuzz.targets`, seed inputs in :mod:`fuzz.seeds`.
"""
