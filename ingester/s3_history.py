"""A :class:`~ingester.history.index.HistoryReader` over a mirror in an object store.

``ingester serve --from s3://BUCKET/PREFIX`` reads the history that ``ingester mirror``
keeps there instead of a local folder, so several stateless ``serve`` instances (behind a
load balancer, on machines without the history) answer the same API.

* :meth:`S3History.list_versions` is one paginated ``ListObjectsV2`` of the prefix.
* :meth:`S3History.change_token` is the ETag of ``PREFIX/_metadata.json`` (one ``HEAD``,
  asked at most once per ``token_ttl`` seconds however many requests come in): the
  mirror replaces that object after the versions of each pass, and the watcher rewrites
  the metadata after every ingest, so a new ETag means "list again". The token also
  carries a coarse clock (``relist_every`` seconds), so the index lists again now and
  then even if the metadata object were never rewritten.
* Versions never change, so the index caches their bytes.

Every failure to reach the store is raised as an ``OSError`` whose ``strerror`` is one
line (the kind and the service's error code, never a credential): ``serve`` answers 503
with it.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from .history.index import VersionEntry, VersionNotFound
from .names import is_version_name, parse_timestamp_from_filename
from .objectstore import METADATA_KEY, MirrorTarget, S3Client, classify, list_remote
from .store import StorageMetadata

__all__ = ["S3History"]


def _unreadable(target: MirrorTarget, exc: Exception) -> OSError:
    failure = classify(exc)
    if failure is None:
        raise exc
    return OSError(errno.EIO, f"{target}: {failure.kind}: {failure.detail}")


def _missing(exc: Exception) -> bool:
    failure = classify(exc)
    return failure is not None and (
        "NoSuchKey" in failure.detail or failure.detail.startswith("404")
    )


class S3History:
    """The versions under ``s3://BUCKET/PREFIX``, read-only."""

    def __init__(
        self,
        client: S3Client,
        target: MirrorTarget,
        *,
        token_ttl: float = 1.0,
        relist_every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.target = target
        self.token_ttl = token_ttl
        self.relist_every = relist_every
        self.clock = clock
        self._lock = threading.Lock()
        self._token: Hashable | None = None
        self._token_at = float("-inf")

    def change_token(self) -> Hashable | None:
        """The metadata object's ETag and a coarse clock; refreshed once per ``token_ttl``."""
        now = self.clock()
        with self._lock:
            if now - self._token_at < self.token_ttl and self._token is not None:
                return self._token
        try:
            head: dict[str, Any] = self.client.head_object(
                Bucket=self.target.bucket, Key=self.target.key(METADATA_KEY)
            )
            etag: str = str(head.get("ETag", ""))
        except Exception as exc:
            if not _missing(exc):
                raise _unreadable(self.target, exc) from None
            etag = "missing"
        token = (etag, int(now // self.relist_every))
        with self._lock:
            self._token, self._token_at = token, now
        return token

    def list_versions(self) -> list[VersionEntry]:
        """Every version object under the prefix, oldest first."""
        try:
            listing = list_remote(self.client, self.target)
        except Exception as exc:
            raise _unreadable(self.target, exc) from None
        entries = []
        for name in sorted(listing):
            stamp = parse_timestamp_from_filename(name) if is_version_name(name) else None
            if stamp is not None:
                entries.append(VersionEntry(name, stamp, listing[name].size))
        return entries

    def read_version(self, name: str) -> bytes:
        """One version's bytes; :class:`VersionNotFound` when the store has none."""
        if not is_version_name(name):
            raise VersionNotFound(name)
        try:
            response: dict[str, Any] = self.client.get_object(
                Bucket=self.target.bucket, Key=self.target.key(name)
            )
            data: bytes = response["Body"].read()
        except Exception as exc:
            if _missing(exc):
                raise VersionNotFound(name) from None
            raise _unreadable(self.target, exc) from None
        return data

    def read_metadata(self) -> StorageMetadata:
        """The mirrored ``_metadata.json``; defaults when it is missing or corrupt."""
        try:
            response: dict[str, Any] = self.client.get_object(
                Bucket=self.target.bucket, Key=self.target.key(METADATA_KEY)
            )
            raw: bytes = response["Body"].read()
        except Exception as exc:
            if _missing(exc):
                return StorageMetadata()
            raise _unreadable(self.target, exc) from None
        try:
            return StorageMetadata.model_validate_json(raw)
        except ValueError:  # MetadataCorrupt
            return StorageMetadata()
