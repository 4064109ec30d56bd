"""``ingester restore``: rebuild a working history from its copy in an object store.

Every version under ``s3://BUCKET/PREFIX/`` is downloaded, checked, and written through
:mod:`ingester.durable` (temp file, fsync, link, fsync the folder) under its own name,
byte for byte and read-only. Then the remote ``_metadata.json`` is put in place and
:meth:`HistoryStore.initialize` makes the metadata agree with the files and points the
latest link at the newest version, so the result passes ``ingester verify``.

A version already in the target history is left alone when its bytes are the same (a
restore can be run again after an interruption and only fetches what is missing); one
with other bytes is reported and never overwritten. Nothing is ever deleted.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import durable
from .durable import StorageError
from .names import is_version_name
from .objectstore import (
    METADATA_KEY,
    Failure,
    MirrorTarget,
    RemoteObject,
    S3Client,
    classify,
    content_md5,
    list_remote,
)
from .store import METADATA_MODE, VERSION_MODE, HistoryStore

__all__ = ["RestoreError", "RestoreResult", "restore_history"]

# A single-part upload's ETag is the hex MD5 of the bytes (multipart ones end in "-N").
_PLAIN_ETAG_RE = re.compile(r"^[0-9a-f]{32}$")


class RestoreError(Exception):
    """The restore cannot go on; ``str()`` is one line."""


@dataclass
class RestoreResult:
    """What a restore did."""

    restored: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    bytes: int = 0
    metadata: bool = False
    latest: str | None = None


def _failure(exc: Exception) -> Failure:
    failure = classify(exc)
    if failure is None:
        raise exc
    return failure


def _fetch(client: S3Client, target: MirrorTarget, obj: RemoteObject) -> bytes:
    try:
        response: dict[str, Any] = client.get_object(Bucket=target.bucket, Key=target.key(obj.name))
        data: bytes = response["Body"].read()
    except Exception as exc:
        failure = _failure(exc)
        raise RestoreError(f"cannot download {target.key(obj.name)}: {failure.detail}") from None
    if len(data) != obj.size:
        raise RestoreError(f"{obj.name}: got {len(data)} bytes, the listing says {obj.size}")
    if _PLAIN_ETAG_RE.match(obj.etag) and content_md5(data)[1] != obj.etag:
        raise RestoreError(f"{obj.name}: the bytes do not match the object's ETag (MD5)")
    return data


def restore_history(
    client: S3Client, target: MirrorTarget, store: HistoryStore, *, concurrency: int = 8
) -> RestoreResult:
    """Restore every remote version into ``store`` (call with the history lock held).

    Raises :class:`RestoreError` (one line) when the object store cannot be read or a
    download is damaged, and :class:`~ingester.durable.StorageError` when the history
    cannot be written. What was written before an error stays: run it again to finish.
    """
    try:
        listing = list_remote(client, target)
    except Exception as exc:
        raise RestoreError(f"cannot list {target}: {_failure(exc).detail}") from None
    versions = sorted(n for n in listing if is_version_name(n))
    if not versions:
        raise RestoreError(f"no versions at {target}")
    try:
        store.history_dir.mkdir(parents=True, exist_ok=True)
        store.latest_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError("create folder", store.history_dir, exc) from exc
    had_metadata = store.metadata_path.exists()
    result = RestoreResult()
    have = set(store.scan())
    wanted: list[RemoteObject] = []
    for name in versions:
        obj = listing[name]
        if name not in have:
            wanted.append(obj)
            continue
        try:
            local = store.version_path(name).read_bytes()
        except OSError as exc:
            raise StorageError("read", store.version_path(name), exc) from exc
        remote_md5 = obj.etag if _PLAIN_ETAG_RE.match(obj.etag) else None
        if len(local) == obj.size and remote_md5 in (None, content_md5(local)[1]):
            result.present.append(name)
        else:
            result.conflicts.append(name)

    def fetch(obj: RemoteObject) -> bytes:
        return _fetch(client, target, obj)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        # Downloads run ahead in parallel; writes stay in name order, one at a time.
        for obj, data in zip(wanted, pool.map(fetch, wanted), strict=True):
            durable.write_file(store.history_dir, obj.name, data, mode=VERSION_MODE)
            result.restored.append(obj.name)
            result.bytes += len(data)

    meta = listing.get(METADATA_KEY)
    if meta is not None and not had_metadata:
        data = _fetch(client, target, meta)
        durable.write_file(store.history_dir, METADATA_KEY, data, mode=METADATA_MODE, replace=True)
        result.metadata = True
    # The metadata's counts and the latest link now follow the files on disk.
    store.initialize()
    result.latest = store.latest_version_name()
    return result
