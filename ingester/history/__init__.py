"""The history: versions of the payload, immutable, named in ingestion order.

Owns what a history *is*, wherever it is kept, and the one way it is written. The
interfaces (:mod:`.base`): the reader and writer protocols, the version entry, the one
definition of "latest" and of "at or before T". The local backing: its reader
(:mod:`.local`, which follows no symlink) and its store (:mod:`.store`: versions, the
latest link (:mod:`.latest`), ``_metadata.json`` (its model :mod:`.metadata`, the file
:mod:`.metadata_file`), retention applied (:mod:`.cleanup`); a group of versions made
durable by one fsync, :mod:`.batch`). A backing in memory
(:mod:`.memory`), the sorted index ``serve`` answers from (:mod:`.index`), version
names (:mod:`.names`), the retention rule (:mod:`.retention`), the one-writer lock
(:mod:`.lock`) and durable writes (:mod:`.durable`: temp file, fsync, rename or link,
fsync the folder). The object-store backing is the mirror's (:mod:`ingester.mirror.s3_history`).

May import: :mod:`ingester.errors`, :mod:`ingester.clock` and :mod:`ingester.payload`.
Nothing that watches, serves, mirrors, reports or runs commands.
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
