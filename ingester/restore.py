"""``ingester restore``: rebuild a working history from its copy in an object store.

Every version under ``s3://BUCKET/PREFIX/`` is downloaded, checked, and written through
:mod:`ingester.durable` (temp file, fsync, link, fsync the folder) under its own name,
byte for byte and read-only. Then the remote ``_metadata.json`` is put in place and
:meth:`HistoryStore.initialize` makes the metadata agree with the files and points the
latest link at the newest version, so the result passes ``ingester verify``.

A version already in the target history is left alone when its bytes are the same (a
restore can be run again after an interruption and only fetches what is missing); one
with other bytes is reported and never overwritten. Nothing is ever deleted.

How a download is checked: against the listing's size, then against the SHA-256 the
mirror stored in the object's metadata (a mismatch stops the restore). An object
without one was mirrored before the mirror stored checksums: its ETag is taken as
evidence only when it *equals* the MD5 of the bytes (a single-part upload without
SSE-KMS or SSE-C); otherwise (an SSE-KMS bucket) it is restored on its size alone and
counted in :attr:`RestoreResult.unverified`, so that the caller can say so. The ETag's
shape is never trusted: under SSE-KMS it looks like an MD5 and is not one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import durable
from .errors import RestoreError, StorageError
from .names import is_version_name
from .objectstore import (
    METADATA_KEY,
    SHA256_META,
    Failure,
    MirrorTarget,
    RemoteObject,
    S3Client,
    classify,
    content_md5,
    head_remote,
    list_remote,
    sha256_hex,
)
from .store import METADATA_MODE, VERSION_MODE, HistoryStore

__all__ = ["RestoreError", "RestoreResult", "restore_history"]


@dataclass
class RestoreResult:
    """What a restore did."""

    restored: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    bytes: int = 0
    metadata: bool = False
    latest: str | None = None
    unverified: list[str] = field(default_factory=list)
    """Versions checked by size alone: stored without a checksum, ETag not their MD5."""


def _failure(exc: Exception) -> Failure:
    failure = classify(exc)
    if failure is None:
        raise exc
    return failure


def _checked(obj: RemoteObject, data: bytes, stored_sha256: str | None) -> bool:
    """Whether ``data`` is proven to be ``obj``'s bytes (``False``: by size alone).

    Raises :class:`RestoreError` when the stored checksum disagrees.
    """
    if stored_sha256 is not None:
        if sha256_hex(data) != stored_sha256.lower():
            raise RestoreError(
                f"{obj.name}: the bytes do not match the SHA-256 stored with the object"
            )
        return True
    return content_md5(data)[1] == obj.etag


def _fetch(client: S3Client, target: MirrorTarget, obj: RemoteObject) -> tuple[bytes, bool]:
    """``obj``'s bytes, and whether they were checked beyond their size."""
    try:
        response: dict[str, Any] = client.get_object(Bucket=target.bucket, Key=target.key(obj.name))
        data: bytes = response["Body"].read()
    except Exception as exc:
        failure = _failure(exc)
        raise RestoreError(f"cannot download {target.key(obj.name)}: {failure.detail}") from None
    if len(data) != obj.size:
        raise RestoreError(f"{obj.name}: got {len(data)} bytes, the listing says {obj.size}")
    metadata = {str(k).lower(): str(v) for k, v in (response.get("Metadata") or {}).items()}
    return data, _checked(obj, data, metadata.get(SHA256_META))


def _same_as_local(client: S3Client, target: MirrorTarget, obj: RemoteObject, local: bytes) -> str:
    """``"same"``, ``"differs"`` or ``"unverified"`` (same size, nothing more to compare)."""
    if len(local) != obj.size:
        return "differs"
    if content_md5(local)[1] == obj.etag:
        return "same"
    try:
        head = head_remote(client, target, obj.name)
    except Exception as exc:
        raise RestoreError(f"cannot read {target.key(obj.name)}: {_failure(exc).detail}") from None
    if head is None or head.sha256 is None:
        return "unverified"
    return "same" if head.sha256.lower() == sha256_hex(local) else "differs"


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
    wanted = [listing[name] for name in versions if name not in have]
    present = [listing[name] for name in versions if name in have]

    def compare(obj: RemoteObject) -> str:
        try:
            local = store.version_path(obj.name).read_bytes()
        except OSError as exc:
            raise StorageError("read", store.version_path(obj.name), exc) from exc
        return _same_as_local(client, target, obj, local)

    def fetch(obj: RemoteObject) -> tuple[bytes, bool]:
        return _fetch(client, target, obj)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for obj, verdict in zip(present, pool.map(compare, present), strict=True):
            if verdict == "differs":
                result.conflicts.append(obj.name)
                continue
            result.present.append(obj.name)
            if verdict == "unverified":
                result.unverified.append(obj.name)
        # Downloads run ahead in parallel; writes stay in name order, one at a time.
        for obj, (data, checked) in zip(wanted, pool.map(fetch, wanted), strict=True):
            durable.write_file(store.history_dir, obj.name, data, mode=VERSION_MODE)
            result.restored.append(obj.name)
            result.bytes += len(data)
            if not checked:
                result.unverified.append(obj.name)

    meta = listing.get(METADATA_KEY)
    if meta is not None and not had_metadata:
        data, _checked_meta = _fetch(client, target, meta)
        durable.write_file(store.history_dir, METADATA_KEY, data, mode=METADATA_MODE, replace=True)
        result.metadata = True
    # The metadata's counts and the latest link now follow the files on disk.
    store.initialize()
    result.latest = store.latest_version_name()
    return result
