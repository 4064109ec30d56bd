"""The object-store backing: a history under ``s3://BUCKET/PREFIX``, read and written.

One object per version, ``PREFIX/<version name>``, beside ``PREFIX/_metadata.json`` and
``PREFIX/console-usage-synced.json`` (a copy of the latest version: object stores have
no symlinks). ``ingester mirror`` writes it, ``ingester restore`` fetches from it, and
``serve``, ``list``, ``show``, ``export`` and ``check`` read it with ``--from``.

Reading (:class:`~ingester.history.base.HistoryReader`):

* :meth:`S3History.list_versions` is one paginated ``ListObjectsV2`` of the prefix.
* :meth:`S3History.change_token` is the ETag of the metadata object (one ``HEAD``,
  asked at most once per ``token_ttl`` seconds however many requests come in): every
  publish that follows a change of the versions rewrites it, so a new ETag means "list
  again". The token also carries a coarse clock (``relist_every`` seconds), so a reader
  lists again now and then even if the metadata object were never rewritten.

Writing (:class:`~ingester.history.base.HistoryWriter`): a commit is one ``PutObject``
with ``Content-MD5`` (the server refuses bytes that do not match) and ``If-None-Match:
*`` (the store refuses to overwrite a name; plain PUTs where it does not support that).
A single PUT is atomic: a killed upload leaves no partial object. The writer trusts what
it uploaded itself between listings (:meth:`S3History.refresh`).

**One checksum rule** (:func:`same_bytes`), for every question "are these bytes the
object's?" (a download checked, a file restore finds present): the sizes first, then
the SHA-256 the writer stored with the object in user metadata (``x-amz-meta-sha256``),
computed by us and never by the store; failing that, the ETag only when it *equals*
the MD5 of the bytes (a single-part upload without SSE-KMS or SSE-C). The ETag's shape
is never trusted: under SSE-KMS it looks like an MD5 and is not one.

**Proof that the store holds our bytes** (:meth:`S3History.proves`), asked before the
mirror counts an object as its copy (and so lets retention delete the local one): the
size, then the ETag where it equals our bytes' MD5, else the object's bytes themselves
(one ``GET``). Never the stored SHA-256 alone: it is metadata, which a tool that
rewrites an object may carry over unchanged, so it says what the bytes should be, not
what they are. The two fixed objects are checked the same way after each listing.

A version object larger than any drop (:data:`~ingester.payload.gate.MAX_DROP_BYTES`)
is never read whole: the GET's ``Content-Length`` says so before its body is read (and
the body is read no further than one byte past the limit whatever it says), raising
:class:`~ingester.errors.VersionTooLarge`.

Every failure to reach the store is raised as :class:`~ingester.errors.ObjectStoreError`
(an ``OSError``) whose ``str()`` is one line: the target, the kind and the service's
error code, never a credential.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Container, Hashable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ..clock import utc_now
from ..errors import (
    MetadataMissing,
    ObjectStoreError,
    VersionExists,
    VersionNotFound,
    VersionTooLarge,
)
from ..history.base import VersionEntry, derive_metadata, latest_name
from ..history.metadata import METADATA_MAX_BYTES, MetadataCorrupt, StorageMetadata
from ..history.names import is_version_name, parse_timestamp_from_filename
from ..payload.gate import MAX_DROP_BYTES
from .objectstore import (
    LATEST_KEY,
    METADATA_KEY,
    SHA256_META,
    VERSION_META,
    MirrorTarget,
    RemoteObject,
    S3Client,
    classify,
    content_md5,
    head_remote,
    list_remote,
    put_arguments,
    refused_by_policy,
    sha256_hex,
)

__all__ = ["S3History", "StagedObject", "same_bytes"]

log = logging.getLogger("ingester.objectstore")


def same_bytes(obj: RemoteObject, data: bytes) -> bool | None:
    """Whether ``data`` are the bytes of ``obj`` by what it says of itself: ``True``
    they match, ``False`` they do not, ``None`` when nothing but the size can tell (no
    stored SHA-256, an ETag that is not the bytes' MD5).

    The one rule for checking bytes against an object's own description (see the
    module docstring); whether the object *holds* given bytes is :meth:`S3History.proves`.
    """
    if len(data) != obj.size:
        return False
    if obj.sha256 is not None:
        return sha256_hex(data) == obj.sha256.lower()
    if content_md5(data)[1] == obj.etag:
        return True
    return None


def _missing(exc: Exception) -> bool:
    failure = classify(exc)
    return failure is not None and failure.detail.startswith(("404", "NoSuchKey", "NotFound"))


@dataclass
class StagedObject:
    """Bytes ready for one ``PutObject``, with their SHA-256 (computed once)."""

    data: bytes | None
    sha256: str

    def discard(self) -> None:
        """Let go of the bytes (nothing was sent yet)."""
        self.data = None


def _body_within(response: dict[str, Any], limit: int) -> bytes | None:
    """The body of a GET, read no further than one byte past ``limit`` bytes; ``None``
    when the object holds more (a declared size over the limit is not read at all).

    The body is closed either way: an object left half read is never read on.
    """
    declared = response.get("ContentLength")
    body = response["Body"]
    try:
        if isinstance(declared, int) and declared > limit:
            return None
        data: bytes = body.read(limit + 1)
    finally:
        body.close()
    return None if len(data) > limit else data


class S3History:
    """The history under ``target`` in the object store ``client`` reaches.

    ``token_ttl`` and ``relist_every`` (seconds) pace the change token; ``clock`` is
    monotonic seconds for that, ``wall_clock`` the UTC time that decides the latest.
    ``max_version_bytes``: the most a version object holds, in bytes (a larger one is
    never read whole). Thread-safe: the mirror commits from several threads.
    """

    def __init__(
        self,
        client: S3Client,
        target: MirrorTarget,
        *,
        token_ttl: float = 1.0,
        relist_every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utc_now,
        max_version_bytes: int = MAX_DROP_BYTES,
    ) -> None:
        self.client = client
        self.max_version_bytes = max_version_bytes
        self.target = target
        self.location = str(target)
        self.token_ttl = token_ttl
        self.relist_every = relist_every
        self.clock = clock
        self.wall_clock = wall_clock
        self.conditional = True
        """Whether commits send ``If-None-Match: *`` (off once the store says it cannot)."""
        self.known: dict[str, RemoteObject] | None = None
        """Every object under the prefix as of the last :meth:`refresh`, with what was
        written since; ``None`` before the first."""
        self._lock = threading.Lock()
        self._token: Hashable | None = None
        self._token_at = float("-inf")
        self._newest: tuple[str, bytes] | None = None  # the newest version committed here
        self._refused: set[str] = set()  # names publish's ``accept`` refused: skipped
        self._fixed: dict[str, RemoteObject] = {}  # each fixed object as last put or proven

    def _failed(self, exc: Exception) -> ObjectStoreError:
        failure = classify(exc)
        if failure is None:
            raise exc
        return ObjectStoreError(self.location, failure.kind, failure.detail)

    def _get(self, name: str) -> dict[str, Any]:
        response: dict[str, Any] = self.client.get_object(
            Bucket=self.target.bucket, Key=self.target.key(name)
        )
        return response

    def _version_body(self, name: str, response: dict[str, Any]) -> bytes:
        """The body of a GET of version ``name``, read no further than one byte past
        :attr:`max_version_bytes`; :class:`~ingester.errors.VersionTooLarge` when over.

        The body is closed either way: an object left half read is never read on.
        """
        limit = self.max_version_bytes
        data = _body_within(response, limit)
        if data is None:
            declared = response.get("ContentLength")
            # The size when the store declared it; else it sent more than it declared.
            size = declared if isinstance(declared, int) and declared > limit else None
            raise VersionTooLarge(name, self.location, size, limit)
        return data

    # -- reading -----------------------------------------------------------------------

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
                raise self._failed(exc) from None
            etag = "missing"
        token = (etag, int(now // self.relist_every))
        with self._lock:
            self._token, self._token_at = token, now
        return token

    def refresh(self) -> dict[str, RemoteObject]:
        """List the prefix (every object directly under it, by name): what :attr:`known`
        holds from now on."""
        try:
            listing = list_remote(self.client, self.target)
        except Exception as exc:
            raise self._failed(exc) from None
        self.known = listing
        return listing

    def list_versions(self) -> list[VersionEntry]:
        """Every version object under the prefix, oldest first (one listing)."""
        listing = self.refresh()
        entries = []
        for name in sorted(listing):
            stamp = parse_timestamp_from_filename(name) if is_version_name(name) else None
            if stamp is not None:
                entries.append(VersionEntry(name, stamp, listing[name].size))
        return entries

    def read_version(self, name: str) -> bytes:
        """One version's bytes, checked as :meth:`fetch` checks them.

        Raises :class:`~ingester.errors.VersionNotFound` when there is none,
        :class:`~ingester.errors.VersionTooLarge` when it holds more than
        :attr:`max_version_bytes` (its body not read), and
        :class:`~ingester.errors.ObjectStoreError` (the kind ``damaged``) when the bytes
        are not the ones stored under that name: a reader never serves them.
        """
        if not is_version_name(name):
            raise VersionNotFound(name)
        try:
            response = self._get(name)
            data = self._version_body(name, response)
        except VersionTooLarge:
            raise
        except Exception as exc:
            if _missing(exc):
                raise VersionNotFound(name) from None
            raise self._failed(exc) from None
        etag = str(response.get("ETag", "")).strip('"')
        self._checked(name, response, data, size=response.get("ContentLength"), etag=etag)
        return data

    def read_metadata(self) -> StorageMetadata:
        """The metadata object: :class:`~ingester.errors.MetadataMissing` when there is
        none, :class:`~ingester.history.metadata.MetadataCorrupt` when it is not the metadata."""
        try:
            # Another writer's object in its place is never read whole.
            raw = _body_within(self._get(METADATA_KEY), METADATA_MAX_BYTES)
        except Exception as exc:
            if _missing(exc):
                raise MetadataMissing(f"no {self.target.key(METADATA_KEY)}") from None
            raise self._failed(exc) from None
        if raw is None:
            raise MetadataCorrupt(f"over {METADATA_MAX_BYTES} bytes: not the metadata")
        return StorageMetadata.model_validate_json(raw)

    def head(self, name: str) -> RemoteObject | None:
        """``name``'s object with its stored checksum (one ``HEAD``); ``None`` if none."""
        try:
            return head_remote(self.client, self.target, name)
        except Exception as exc:
            raise self._failed(exc) from None

    def fetch(self, obj: RemoteObject) -> tuple[bytes, bool]:
        """``obj``'s bytes (from a listing), checked by :func:`same_bytes` against what the
        object says of itself; and whether that proved them (``False``: size alone).

        Raises :class:`~ingester.errors.ObjectStoreError` when the bytes are not the
        object's (the kind ``damaged``), or when the store cannot be read,
        :class:`~ingester.errors.VersionNotFound` when the object is gone since the
        listing (the mirror's retention deleted it), and
        :class:`~ingester.errors.VersionTooLarge` when the object holds more than
        :attr:`max_version_bytes` (its body not read).
        """
        try:
            response = self._get(obj.name)
            data = self._version_body(obj.name, response)
        except VersionTooLarge:
            raise
        except Exception as exc:
            if _missing(exc):
                raise VersionNotFound(obj.name) from None
            raise self._failed(exc) from None
        return data, self._checked(obj.name, response, data, size=obj.size, etag=obj.etag)

    def _checked(
        self,
        name: str,
        response: dict[str, Any],
        data: bytes,
        *,
        size: object,
        etag: str,
    ) -> bool:
        """Whether ``data`` (a GET's body) proved to be the object's bytes by
        :func:`same_bytes` (``False``: nothing could tell); raises
        :class:`~ingester.errors.ObjectStoreError` (``damaged``) when they are not."""
        metadata = {str(k).lower(): str(v) for k, v in (response.get("Metadata") or {}).items()}
        expected = size if isinstance(size, int) else len(data)
        described = RemoteObject(name, expected, etag, metadata.get(SHA256_META))
        verdict = same_bytes(described, data)
        if verdict is False:
            why = (
                f"got {len(data)} bytes, the listing says {expected}"
                if len(data) != expected
                else "the bytes do not match the SHA-256 stored with the object"
            )
            raise ObjectStoreError(self.location, "damaged", f"{name}: {why}")
        return verdict is True

    def proves(self, obj: RemoteObject, data: bytes) -> bool:
        """Whether ``obj`` (as listed) is proven to hold exactly ``data``: its size, then
        its ETag where that is the MD5 of ``data`` (nothing else has it), else its bytes
        (one ``GET``). ``False`` also for an object gone since the listing, and for one
        whose stored SHA-256 is not that of ``data`` (restore would refuse it)."""
        if len(data) != obj.size:
            return False
        if obj.sha256 is not None and obj.sha256.lower() != sha256_hex(data):
            return False
        if obj.etag and content_md5(data)[1] == obj.etag:
            return True
        return self._read_holds(obj.name, data)

    def _read_holds(self, name: str, data: bytes) -> bool:
        """Whether the object ``name`` holds ``data``, by its bytes (one ``GET``, read no
        further than one byte past ``len(data)``) and the SHA-256 stored with it, if any."""
        try:
            response = self._get(name)
            body = _body_within(response, len(data))
        except Exception as exc:
            if _missing(exc):
                return False
            raise self._failed(exc) from None
        metadata = {str(k).lower(): str(v) for k, v in (response.get("Metadata") or {}).items()}
        stored = metadata.get(SHA256_META)
        return body == data and (stored is None or stored.lower() == sha256_hex(data))

    def compare(self, obj: RemoteObject, data: bytes) -> bool | None:
        """Whether ``data`` are ``obj``'s bytes (:func:`same_bytes`), asking the object's
        stored checksum (one ``HEAD``) when the listing alone cannot tell."""
        verdict = same_bytes(obj, data)
        if verdict is not None or obj.sha256 is not None:
            return verdict
        described = self.head(obj.name)
        return False if described is None else same_bytes(described, data)

    # -- writing -----------------------------------------------------------------------

    def stage(self, data: bytes) -> StagedObject:
        """Hold ``data`` and its SHA-256 for one ``PutObject`` (nothing is sent yet)."""
        return StagedObject(data, sha256_hex(data))

    def _put(self, name: str, data: bytes, *, copies: str | None = None, new: bool) -> str:
        args = put_arguments(self.target, name, data, copies=copies)
        if new and self.conditional:
            args["IfNoneMatch"] = "*"
        try:
            response: dict[str, Any] = self.client.put_object(**args)
        except Exception as exc:
            failed = self._failed(exc)
            if new and self.conditional and "NotImplemented" in failed.detail:
                log.warning("the object store does not support If-None-Match; plain PUTs follow")
                self.conditional = False
                return self._put(name, data, copies=copies, new=new)
            raise failed from None
        etag = str(response.get("ETag") or "").strip('"')
        if not etag:
            # Every S3 store names what it stored by an ETag. A 2xx without one is some
            # other server answering (a wrong endpoint, a portal, a default backend):
            # counting the object stored would let retention delete our only copy.
            raise ObjectStoreError(
                self.location,
                "rejected",
                f"the answer to PUT {self.target.key(name)} has no ETag: not an S3 store "
                "(check the endpoint)",
            )
        return etag

    def commit(self, staged: StagedObject, name: str) -> None:
        """One conditional ``PutObject`` of the staged bytes as version ``name``.

        A name the store already holds is read back (one ``GET``; its stored checksum
        proves nothing, see :meth:`proves`): the same bytes are no error, other bytes
        raise :class:`~ingester.errors.VersionExists`.
        """
        data = staged.data
        if data is None:
            raise RuntimeError("staged bytes already committed or discarded")
        if not is_version_name(name):
            raise ValueError(f"not a version name: {name!r}")
        try:
            etag = self._put(name, data, new=True)
        except ObjectStoreError as exc:
            if exc.kind != "exists":
                raise
            if not self._read_holds(name, data):
                raise VersionExists(name, self.location) from None
            etag = ""
        staged.data = None
        with self._lock:
            if self.known is not None:
                self.known[name] = RemoteObject(name, len(data), etag, staged.sha256)
            if self._newest is None or name > self._newest[0]:
                self._newest = (name, data)

    def _current(self, name: str) -> RemoteObject | None:
        """One of the two fixed objects as the store holds it, with the SHA-256 of the
        bytes it *holds* (its stored checksum is only what they should be): the object
        put or read here last when the listing shows its ETag and size, else its bytes,
        one ``GET`` after the listing. One whose stored checksum is not that of its bytes
        (damaged, or written by other means) gets ``""``, so that it is put again."""
        assert self.known is not None
        current = self.known.get(name)
        if current is None or current.sha256 is not None:
            return current
        put = self._fixed.get(name)
        if put is not None and (put.etag, put.size) == (current.etag, current.size):
            # The object we put or read: any write since would show another ETag (a
            # new one per write under SSE-KMS, the MD5 of other bytes in a plain bucket).
            self.known[name] = put
            return put
        limit = METADATA_MAX_BYTES if name == METADATA_KEY else self.max_version_bytes
        response: dict[str, Any]
        try:
            response = self._get(name)
            body = _body_within(response, limit)
        except Exception as exc:
            if _missing(exc):
                self.known.pop(name, None)
                return None
            failed = self._failed(exc)
            if not refused_by_policy(failed.kind, failed.detail):
                raise failed from None
            # Not to be read here (a policy without s3:GetObject or kms:Decrypt): not
            # proven current, so it is put again, as a damaged one is.
            response, body = {}, None
        metadata = {str(k).lower(): str(v) for k, v in (response.get("Metadata") or {}).items()}
        stored = (metadata.get(SHA256_META) or "").lower()
        held = "" if body is None or sha256_hex(body) != stored else stored
        current = replace(current, sha256=held, version=metadata.get(VERSION_META))
        self.known[name] = current
        if held:
            self._fixed[name] = current  # proven: the next listing showing it needs no read
        return current

    def _put_fixed(self, name: str, data: bytes, copies: str | None = None) -> None:
        """Replace a fixed object (one PUT: a reader sees the old or the new, whole)."""
        etag = self._put(name, data, copies=copies, new=False)
        assert self.known is not None
        self.known[name] = put = RemoteObject(name, len(data), etag, sha256_hex(data), copies)
        self._fixed[name] = put

    def _digest(self, name: str) -> str:
        """The SHA-256 of version ``name``'s bytes: as committed here, else as stored with
        the object (a ``HEAD``), else computed from its bytes (a ``GET``); remembered."""
        assert self.known is not None
        known = self.known.get(name)
        if known is None or known.sha256 is None:
            known = self.head(name) or known
        if known is None:
            raise VersionNotFound(name)
        if known.sha256 is None:
            known = replace(known, sha256=sha256_hex(self._version_bytes(name)))
        self.known[name] = known
        assert known.sha256 is not None
        return known.sha256

    def _version_bytes(self, name: str) -> bytes:
        newest = self._newest
        if newest is not None and newest[0] == name:
            return newest[1]
        return self.read_version(name)

    def publish(
        self,
        base: StorageMetadata | None = None,
        accept: Callable[[str, bytes], bool] | None = None,
        ours: Callable[[str], bytes | None] | None = None,
        unproven: Container[str] = (),
    ) -> None:
        """Point the latest copy at the latest version and rewrite the metadata object,
        each only when what the store holds differs (compared by SHA-256).

        The versions are those of the last :meth:`refresh` and the commits since (a
        listing first when there was none); the totals come from ``base`` (the mirror
        gives the local history's), else from the stored metadata object. ``accept``
        (name, bytes) may refuse a version as the latest copy (the mirror refuses what
        is no valid payload): it is then left out, of the metadata too, and the next
        newest is taken. So is a version larger than :attr:`max_version_bytes`.

        ``ours`` (name) gives the writer's own bytes of a version proven to be in the
        store (the mirror's, compared or uploaded), which the latest copy is then made
        of and compared by; other versions are read from the store and checked.
        ``unproven`` are versions whose objects were found not to hold the writer's
        bytes: never the latest copy, and left out of the metadata, until proven.
        """
        if self.known is None:
            self.refresh()
        assert self.known is not None
        now = self.wall_clock()
        names = sorted(
            n
            for n in self.known
            if is_version_name(n) and n not in self._refused and n not in unproven
        )
        while (newest := latest_name(names, now)) is not None:
            data: bytes | None
            try:
                mine = ours(newest) if ours is not None else None
                digest = sha256_hex(mine) if mine is not None else self._digest(newest)
                current = self._current(LATEST_KEY)
                if current is not None and (current.version, current.sha256) == (newest, digest):
                    break
                data = mine if mine is not None else self._version_bytes(newest)
            except VersionTooLarge:
                # Put in the bucket by other means (no drop is so large): no latest copy
                # can be made of it, as of a version ``accept`` refuses.
                data = None
            except ObjectStoreError as exc:
                if exc.kind != "damaged":
                    raise
                # Its bytes are not the ones stored with it: no latest copy is made of
                # what may not be the version (restore would refuse it too).
                log.warning("%s: never the latest copy; remove or replace it", exc)
                data = None
            if data is None or (accept is not None and not accept(newest, data)):
                self._refused.add(newest)
                names.remove(newest)
                continue
            self._put_fixed(LATEST_KEY, data, copies=newest)
            break
        stored = StorageMetadata()
        if base is None:
            try:
                stored = self.read_metadata()
            except (MetadataMissing, MetadataCorrupt):
                pass
        data = derive_metadata(names, now, stored, base, holds_deleted=True).to_json_bytes()
        current = self._current(METADATA_KEY)
        if current is None or current.sha256 != sha256_hex(data):
            self._put_fixed(METADATA_KEY, data)

    def remove(self, name: str) -> None:
        """Delete version ``name``'s object (one ``DeleteObject``; gone already: no error)."""
        try:
            self.client.delete_object(Bucket=self.target.bucket, Key=self.target.key(name))
        except Exception as exc:
            if not _missing(exc):
                raise self._failed(exc) from None
        with self._lock:
            if self.known is not None:
                self.known.pop(name, None)

    def versions_known(self) -> Iterable[str]:
        """The version names :attr:`known` holds (unsorted); nothing before a listing."""
        return [n for n in (self.known or {}) if is_version_name(n)]
