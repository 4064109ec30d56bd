"""Junk in the bucket: objects under version names that hold no valid payload.

An object under a version's name that the history lacks counts as a version only when
it holds a valid payload, as a version local retention deleted does. One that is not
JSON, no payload, larger than any drop, or whose bytes do not match the SHA-256 stored
with it (another writer's, or damaged) is junk: no restore brings it back, so it is
never the latest copy, never counted in the bucket's metadata, and never deleted as a
version retention deleted; each is said once (``docs/mirror.md``, "What is in the
bucket"). :class:`JunkObjects` judges such objects, each once per process while its
ETag stays the same, and the object a pass would make the latest copy. The mirror's pass
(:mod:`.sync`) asks it, and turns a failed request into the end of the pass as it does
for its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor

from ..errors import ObjectStoreError, PayloadRejected, VersionNotFound, VersionTooLarge
from ..history.names import is_version_name
from ..payload.model import judge_payload
from ..runtime.signals import StopFlag
from ..threads import in_order
from .objectstore import METADATA_KEY, MirrorTarget, RemoteObject, refused_by_policy
from .s3_history import S3History

__all__ = ["JunkObjects", "Readers"]

log = logging.getLogger("ingester.mirror")

Readers = Callable[[int], tuple[Executor, int]]
"""Given how many objects are to be read back, a pool to read them on and how many
threads it has (0: an inline executor, each read run as it is submitted)."""


class JunkObjects:
    """What is known of the objects in ``target`` under version names that are not ours.

    ``stop`` ends a judging between objects; ``alive`` is called between them (the
    watchdog's ping). Used from the mirror's own thread; the reads run on the pool the
    caller hands in.
    """

    def __init__(self, target: MirrorTarget, *, stop: StopFlag, alive: Callable[[], None]) -> None:
        self.target = target
        self._stop = stop
        self._alive = alive
        # Objects under version names the history lacks, as judged (once per ETag): the
        # ETag, and why it is no valid payload (None: it is one).
        self._judged: dict[str, tuple[str, str | None]] = {}

    def payload_or_said(self, name: str, data: bytes) -> bool:
        """Whether object ``name`` may be the latest copy: a valid payload. Another
        writer's junk under a version's name is said once and never published."""
        try:
            judge_payload(data)
        except PayloadRejected as exc:
            log.warning(
                "%s in %s is no valid payload (%s): never the latest copy; remove it",
                name,
                self.target,
                exc.reason,
            )
            return False
        return True

    def no_payloads(self, remote: S3History, local: set[str], readers: Readers) -> set[str]:
        """The objects of ``remote`` (as last listed) under version names the history
        (``local``) lacks that hold no valid payload: another writer's, or damaged.

        The history lacking it, an object cannot be proven ours; what it must be is a
        valid payload, as a version retention deleted here is. Each is read once per
        process while its ETag stays the same (one ``GET`` of a few hundred bytes, on
        the pool ``readers`` gives), the watchdog pinged between them; a stop leaves the
        rest counted, as they were before they were read. One the store refuses to let
        be read is counted: nothing says it is not a version. Raises
        :class:`~ingester.errors.ObjectStoreError` when the store cannot be used.
        """
        known = remote.known or {}
        # Forgotten with its object: what is remembered never outgrows the bucket.
        self._judged = {n: v for n, v in self._judged.items() if n in known}
        others = [
            obj
            for name, obj in sorted(known.items())
            if name not in local and is_version_name(name)
        ]
        to_read = [obj for obj in others if self._judged.get(obj.name, (None,))[0] != obj.etag]
        pool, threads = readers(len(to_read))

        def problem(obj: RemoteObject) -> str | None:
            return self._payload_problem(remote, obj)

        verdicts = in_order(pool, problem, to_read, threads)
        try:
            for obj in to_read:
                if self._stop.is_set():
                    break
                self._alive()
                why = next(verdicts)
                if why is not None:
                    log.warning(
                        "%s in %s is no valid payload (%s): never the latest copy, nor "
                        "counted as a version in its %s; remove it",
                        obj.name,
                        self.target,
                        why,
                        METADATA_KEY,
                    )
                self._judged[obj.name] = (obj.etag, why)
        finally:
            verdicts.close()
            pool.shutdown(wait=True, cancel_futures=True)
        # Those a stop left unread are not in it: counted, as before they were read.
        return {
            obj.name
            for obj in others
            if (judged := self._judged.get(obj.name)) is not None
            and judged[0] == obj.etag
            and judged[1] is not None
        }

    def _payload_problem(self, remote: S3History, obj: RemoteObject) -> str | None:
        """Why object ``obj`` is no valid payload (read on a read thread); ``None`` when
        it is one, or when that cannot be told (gone since the listing, or a read the
        store refuses). Raises :class:`~ingester.errors.ObjectStoreError` when the store
        cannot be used."""
        try:
            data = remote.read_version(obj.name)
        except VersionNotFound:
            return None
        except VersionTooLarge as exc:
            return exc.reason
        except ObjectStoreError as exc:
            if exc.kind == "damaged":
                return exc.detail.removeprefix(f"{obj.name}: ")
            if refused_by_policy(exc.kind, exc.detail):
                return None
            raise
        try:
            judge_payload(data)
        except PayloadRejected as rejected:
            return rejected.reason
        return None
