"""``python -m ingester``."""

from .cli.group import run

run()
