"""``_metadata.json``: the history's metadata as a model, and what a damaged file means.

:class:`StorageMetadata` holds the six keys the original server's readers rely on, then
a few of ours; it reads and writes the file's JSON itself (no pydantic: a watcher never
builds model classes for it). :class:`MetadataCorrupt` is a file that cannot be read as
one. The file is a cache of the version files, rebuilt from a scan when it disagrees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from ..errors import IngesterError

__all__ = ["METADATA_MAX_BYTES", "MetadataCorrupt", "StorageMetadata"]


class MetadataCorrupt(IngesterError, ValueError):
    """``_metadata.json`` does not hold the metadata: not JSON, or a key of the wrong type."""


METADATA_MAX_BYTES = 1 << 20
"""The most of the metadata that is read, from a file or an object: it is a few hundred
bytes, so anything over this is not the metadata (something put in its place), and is
never read whole."""


def _key(alias: str, default: int | None) -> Any:
    return field(default=default, metadata={"alias": alias})


@dataclass(frozen=True)
class StorageMetadata:
    """``_metadata.json``: the six keys every reader relies on, then a few more.

    Counts are ints >= 0; the others are strings or null. A plain dataclass (the file
    is ours and small): a watcher never needs pydantic's model machinery for it.
    """

    version_count: int = _key("versionCount", 0)
    oldest_timestamp: str | None = _key("oldestTimestamp", None)
    newest_timestamp: str | None = _key("newestTimestamp", None)
    last_cleanup: str | None = _key("lastCleanup", None)
    total_versions_created: int = _key("totalVersionsCreated", 0)
    total_versions_deleted: int = _key("totalVersionsDeleted", 0)
    latest_version: str | None = _key("latestVersion", None)
    future_versions: int = _key("futureVersions", 0)
    # The camelCase keys the file read did not hold (their defaults stand in): null and
    # absent read alike, and a report that quotes the file must tell them apart.
    absent: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def model_validate_json(cls, raw: bytes | str) -> StorageMetadata:
        """Read the file's bytes: camelCase keys (or the field names); others ignored.

        ``absent`` then names the keys the file did not hold. Raises
        :class:`MetadataCorrupt` (a ``ValueError``) naming the first problem.
        """
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise MetadataCorrupt(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise MetadataCorrupt("not a JSON object")
        values: dict[str, Any] = {}
        for item in fields(cls):
            alias = item.metadata["alias"]
            key = alias if alias in doc else item.name if item.name in doc else None
            if key is None:
                continue
            value = doc[key]
            if item.type == "int":  # a count
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise MetadataCorrupt(f"{alias} must be a whole number >= 0")
            elif value is not None and not isinstance(value, str):
                raise MetadataCorrupt(f"{alias} must be a string or null")
            values[item.name] = value
        meta = cls(**values)
        held = {f.metadata["alias"] for f in fields(cls) if f.name in values}
        object.__setattr__(
            meta, "absent", frozenset(f.metadata["alias"] for f in fields(cls)) - held
        )
        return meta

    def model_copy(self, *, update: dict[str, Any] | None = None) -> StorageMetadata:
        """A copy, with the fields in ``update`` (by field name) changed."""
        return replace(self, **(update or {}))

    def model_dump(self, *, by_alias: bool = False) -> dict[str, Any]:
        """The fields as a dict, keyed by their camelCase names with ``by_alias``."""
        return {
            item.metadata["alias"] if by_alias else item.name: getattr(self, item.name)
            for item in fields(self)
        }

    def to_json_bytes(self) -> bytes:
        """The file's bytes: camelCase keys, the six required ones first."""
        return (json.dumps(self.model_dump(by_alias=True), indent=2) + "\n").encode()

    def scan_facts(self) -> tuple[object, ...]:
        """The keys that must agree with the version files on disk, as compared: the
        two times to the second (see :func:`_to_the_second`)."""
        return tuple(_compared(key, getattr(self, name)) for key, name in _FACTS)

    def facts_differing(self, derived: StorageMetadata) -> list[str]:
        """The camelCase keys among :meth:`scan_facts` on which this metadata (as read)
        and ``derived`` (the same recomputed from the version files) disagree, in the
        file's order; empty when they agree."""
        return [
            key
            for key, name in _FACTS
            if _compared(key, getattr(self, name)) != _compared(key, getattr(derived, name))
        ]


_FACTS = (
    ("versionCount", "version_count"),
    ("oldestTimestamp", "oldest_timestamp"),
    ("newestTimestamp", "newest_timestamp"),
    ("latestVersion", "latest_version"),
    ("futureVersions", "future_versions"),
)
"""The scan facts: (camelCase key, field name)."""


def _compared(key: str, value: object) -> object:
    return _to_the_second(value) if key.endswith("Timestamp") else value


def _to_the_second(value: object) -> object:
    """A time as the metadata holds it, compared to the second: a version's name says its
    time to the second, and the original server wrote the milliseconds of each save
    (``2026-11-21T10:30:00.412Z`` for the version named ``2026-11-21T10-30-00-…``), which
    say nothing the files disagree with. Anything that is no such time is compared as
    written."""
    if not isinstance(value, str):
        return value
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return value
    if stamp.tzinfo is None:
        return value
    return stamp.astimezone(UTC).replace(microsecond=0)
