"""Finishing what a crash or a failure left in ``.claimed/``: a pure function of names.

A claim's name is the version name it was given before it was claimed, so what is left
after a crash at any step is decided from names alone (``docs/design.md``, "Crashes"):

* a claim whose version exists with the same bytes: its version is adopted (its name
  made durable) and the claim removed;
* a claim whose version name is taken by other bytes: stored anew under a new name;
* a claim that is a second name of a drop back in the spool: the claim is removed;
* otherwise: the claimed bytes are judged and stored as their version.

Run on start with the history lock held, and in the maintenance rounds after a failure.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path

from ..errors import StorageError
from ..history import durable
from ..history.batch import Batch
from ..history.names import is_version_name
from .intake import Intake
from .outcomes import Dropped, Ignored, Outcome, Recovered, Stored
from .spool import Opened, open_entry

__all__ = ["ClaimRecovery"]

log = logging.getLogger("ingester.watcher")


class ClaimRecovery:
    """The recovery of the claims left in ``intake``'s ``.claimed/``."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.store = intake.store
        self.spool = intake.spool

    def recover(self) -> list[Outcome]:
        """Finish every claim left by a crash or a failure (with the history lock held).

        Raises :class:`StorageError` when a claim cannot be finished yet.
        """
        outcomes: list[Outcome] = []
        names = self.spool.claimed()
        if names:
            self.intake.check_claimed()
        with self.store.batch(update_latest=False) as batch:
            for version in names:
                outcome = self._recover_claim(version, batch)
                if outcome is not None:
                    outcomes.append(outcome)
        return outcomes

    def _stored_as(self, claim: Path, version: str) -> bool:
        """Whether the claim's bytes are stored as ``version`` (so the claim may go).

        A claim and its version that are one directory entry (seen through a link) are
        never "duplicates"; hard links to one inode are; two files are when their
        bytes are equal. Raises :class:`StorageError` when a claim cannot be judged.
        """
        stored = self.store.version_path(version)
        try:
            a, b = os.lstat(claim), os.lstat(stored)
        except OSError as exc:
            raise StorageError("stat claim", claim, exc) from exc
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            if a.st_nlink < 2:
                raise StorageError(
                    "finish claim",
                    claim,
                    OSError(errno.EPERM, f"unsafe: it is the version {stored} itself"),
                )
            return True
        if not (stat.S_ISREG(a.st_mode) and stat.S_ISREG(b.st_mode)) or a.st_size != b.st_size:
            return False
        opened = open_entry(claim, max(a.st_size, 1))
        if not isinstance(opened, Opened):
            return False
        try:
            return stored.read_bytes() == opened.data
        except OSError as exc:
            raise StorageError("read", stored, exc) from exc

    def _recover_claim(self, version: str, batch: Batch) -> Outcome | None:
        claim = self.spool.claimed_dir / version
        if not is_version_name(version):
            return Ignored(
                version, claim.name, f"ignoring {claim}: not a name this watcher gives claims"
            )
        target = version
        if self.store.has_version(version):
            if self._stored_as(claim, version):
                # The version's name durable before its claim goes; and it may be new to
                # this process too (its claim could not be removed at once).
                batch.adopt(version)
                durable.remove_file(claim)
                return Recovered(version)
            # Its name is taken by other bytes: nothing claimed is deleted unless its
            # bytes are stored, so it is stored under a new name.
            target = self.store.next_version_name()
        elif self._back_in_spool(claim):
            # A crash while putting a failed drop back: the spool has it again, as a
            # drop like any other; the claim is only a second name for it.
            durable.remove_file(claim)
            log.info("%s is back in the spool; removed its claim", version)
            return None
        started = time.perf_counter()
        opened = self.intake.open_and_judge(claim, version, claimed=True)
        if isinstance(opened, Dropped):
            return None
        if not isinstance(opened, Opened):
            return opened
        self.store.write_version(target, opened.data)
        durable.remove_file(claim)
        return Stored(version, target, len(opened.data), started, pending=False)

    def _back_in_spool(self, claim: durable.StrPath) -> bool:
        """Whether a spool entry is the claimed inode itself (see :meth:`Intake._unclaim`).

        Raises :class:`StorageError` when that cannot be told (the claim or the spool
        cannot be looked at): storing the claim then could store a drop the spool
        still holds, so the claim waits for the next round.
        """
        try:
            st = os.lstat(claim)
        except OSError as exc:
            raise StorageError("stat claim", claim, exc) from exc
        if st.st_nlink < 2:
            return False
        return any(
            (c.ino, c.dev) == (st.st_ino, st.st_dev)
            for c in self.spool.scan()
            if stat.S_ISREG(c.mode)
        )
