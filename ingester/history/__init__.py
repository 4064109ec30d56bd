"""The history: versions of the payload, immutable, named in ingestion order.

Owns what a history *is*, wherever it is kept: the reader and writer interfaces and
the one definition of "latest" and "at or before T" (:mod:`.base`), the local backing's
reader (:mod:`.local`; its writer is :class:`ingester.store.HistoryStore`), a backing in
memory for tests (:mod:`.memory`) and the sorted index ``serve`` answers from
(:mod:`.index`). The object-store backing is :mod:`ingester.s3_history`.

May import: the pure core (names, errors, clock, the store's metadata model). Nothing
that serves, mirrors, watches or renders.
"""

from .base import (
    FUTURE_SLACK,
    HistoryReader,
    HistoryWriter,
    StagedVersion,
    VersionEntry,
    at_or_before,
    latest_name,
)

__all__ = [
    "FUTURE_SLACK",
    "HistoryReader",
    "HistoryWriter",
    "StagedVersion",
    "VersionEntry",
    "at_or_before",
    "latest_name",
]
