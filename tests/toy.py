"""The toy model file the core tests fit, by path, as a user would."""

from pathlib import Path

TOY = f"{Path(__file__).resolve().parent / 'data' / 'toy_model.py'}:toy"
