"""The one-writer lock of a history, under the name older code imports it by.

It lives in :mod:`ingester.history.lock` and is exported by :mod:`ingester`; this module
keeps ``from ingester.lock import HistoryLock``, as ``docs/python-api.md`` once showed
it, working.
"""

from .errors import LockHeld
from .history.lock import HistoryLock

__all__ = ["HistoryLock", "LockHeld"]
