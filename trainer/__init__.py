"""The trainer's parts, a module each; train.py is the command line that runs them (its docstring
lists them). Nothing is imported here: train.py imports trainer.launch before torch."""
