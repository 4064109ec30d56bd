"""``python -m ingester``."""

from .cli import run

run()
