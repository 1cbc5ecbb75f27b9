"""The commands of the command line, by theme, registered on :data:`recipec.cli.cli`.

Part of the CLI layer: like ``cli.py`` they parse, call the API and print; the logic lives
below. Every heavy import (torch, the pipeline) is inside a command function, so that
``recipec --help`` and ``recipec validate`` stay torch-free.

- :mod:`.recipes`: validate, schema, build, plan (a recipe, and the run it makes)
- :mod:`.checkpoints`: convert, inspect, card, features (the files of a run)
- :mod:`.models`: eval, predict, lr-find (a model run on data, reported)
- :mod:`.hub`: push (the hub folder to the Hugging Face Hub)
- :mod:`.sweep`: sweep (an Optuna study whose trials are runs)
"""
