"""Every error the package raises, under one base: :class:`IngesterError`.

Catch ``IngesterError`` to handle anything of ours; each class also keeps the builtin
base callers may already catch (``OSError`` for storage, ``ValueError`` for bad input).
Each one's ``str()`` is the one line shown to the user.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shlex
import stat
import sys
from pathlib import Path
from typing import Any, TypeGuard

__all__ = [
    "PERMISSION_ADVICE",
    "BadEndpoint",
    "CacheNotRefreshed",
    "IngesterError",
    "LockHeld",
    "MetadataMissing",
    "MovedNotDurable",
    "NotRegularFile",
    "ObjectStoreError",
    "ObjectStoreUnavailable",
    "PayloadRejected",
    "ReportError",
    "RestoreError",
    "SettingError",
    "SnapshotError",
    "StorageError",
    "VersionExists",
    "VersionNotFound",
    "VersionTooLarge",
    "attribute_refusal",
    "describe_os_error",
    "file_on_the_way",
    "folder_not_entered",
    "is_permission_problem",
    "missing_root",
    "on_read_only_filesystem",
    "os_cause",
    "refusal_words",
    "refusing_attribute",
    "shown",
    "unreadable",
]


class IngesterError(Exception):
    """The base of every error raised by this package."""


class StorageError(IngesterError, OSError):
    """A storage step failed; ``str()`` names the action, the path and the cause.

    ``errno`` is the cause's, ``action`` the step (e.g. ``"write"``), ``path`` the file.
    An EPERM that an attribute of the file or its folder caused (immutable, append-only)
    names it, and the ``chattr`` that clears it, in ``strerror`` (see ``refused_by``).
    """

    def __init__(self, action: str, path: os.PathLike[str] | str, cause: OSError) -> None:
        # A cause that names its attribute already (another StorageError's) is kept.
        refused_by: tuple[Path, str, str] | None = (
            cause.refused_by if isinstance(cause, _Refusal) else None
        )
        if action == "create folder" and cause.errno == errno.EEXIST:
            # mkdir's "File exists" for a name that is a file (or a link to nothing)
            # reads as if the folder were there: say what is wrong with it instead.
            cause = NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", os.fspath(path))
        elif cause.errno == errno.ENOTDIR:
            # The kernel's "Not a directory" names no path: the user must find which
            # folder on the way is a file. Say which, when it can be told.
            blocker = file_on_the_way(Path(path))
            if blocker is not None:
                words = f"{blocker} is not a folder"
                cause = NotADirectoryError(errno.ENOTDIR, words, os.fspath(path))
        elif cause.errno == errno.EPERM and refused_by is None:
            # Root is refused too, whoever owns it: the kernel's words cannot tell an
            # attribute from a right this user lacks. Say which one holds it, and the
            # command that clears it.
            refused_by = attribute_refusal(Path(path))
            if refused_by is not None:
                cause = _RefusedByAttribute(cause, Path(path), refused_by)
        code = cause.errno if cause.errno is not None else 0
        OSError.__init__(self, code, cause.strerror or str(cause), os.fspath(path))
        self.action = action
        self.path = Path(path)
        self.cause = cause
        self.refused_by: tuple[Path, str, str] | None = refused_by
        """Where EPERM came from an attribute: the file or folder that holds it, its
        word (``"immutable"``, ``"append-only"``) and the command that clears it."""

    @property
    def cause_name(self) -> str:
        """The symbolic errno, e.g. ``ENOSPC``."""
        return errno.errorcode.get(self.errno or 0, "error")

    def __str__(self) -> str:
        return f"cannot {self.action} {self.path}: {self.strerror} [{self.cause_name}]"


_FS_IOC_GETFLAGS = 0x80086601  # Linux's _IOR('f', 1, long): a file's attributes (lsattr)
_ATTRIBUTES = ((0x10, "immutable", "chattr -i"), (0x20, "append-only", "chattr -a"))
# FS_IMMUTABLE_FL and FS_APPEND_FL: either makes a chmod, an unlink, a create or a rename
# fail with EPERM, for root too, whoever owns the file or folder.


def refusing_attribute(path: Path) -> tuple[str, str] | None:
    """The attribute of ``path`` that refuses changes: its word (``"immutable"``,
    ``"append-only"``) and the command that clears it (``"chattr -i"``, ``"chattr -a"``);
    ``None`` when it has neither, or that cannot be told (gone, a link, neither a
    regular file nor a folder, a filesystem without attributes). Never raises."""
    try:
        # Only a file or a folder is opened: opening a device or a FIFO may act on it.
        if not stat.S_ISREG(mode := os.lstat(path).st_mode) and not stat.S_ISDIR(mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        flags = int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4], sys.byteorder)
    except OSError:
        return None
    finally:
        os.close(fd)
    for bit, word, clear in _ATTRIBUTES:
        if flags & bit:
            return word, clear
    return None


def attribute_refusal(path: Path) -> tuple[Path, str, str] | None:
    """Which of ``path`` and its folder holds an attribute that refuses a change of
    ``path`` (see :func:`refusing_attribute`): that one, the attribute's word and the
    command that clears it; ``None`` when neither does. Never raises."""
    for where in (path, path.parent):
        found = refusing_attribute(where)
        if found is not None:
            return (where, *found)
    return None


def refusal_words(path: Path, refusal: tuple[Path, str, str]) -> str:
    """How :func:`attribute_refusal`'s answer for ``path`` is said: ``"it is immutable
    (chattr -i PATH clears that)"``, or ``"its folder FOLDER is append-only (...)"``."""
    where, word, clear = refusal
    subject = "it" if where == path else f"its folder {where}"
    return f"{subject} is {word} ({clear} {shlex.quote(os.fspath(where))} clears that)"


class _RefusedByAttribute(IngesterError, PermissionError):
    """EPERM on a path, with the attribute that refused it in its words:
    ``"Operation not permitted: it is immutable (chattr -i PATH clears that)"``.
    ``refused_by`` is :func:`attribute_refusal`'s answer."""

    def __init__(self, cause: OSError, path: Path, refusal: tuple[Path, str, str]) -> None:
        words = f"{cause.strerror or os.strerror(errno.EPERM)}: {refusal_words(path, refusal)}"
        super().__init__(errno.EPERM, words)
        self.refused_by: tuple[Path, str, str] | None = refusal


# The errors whose words name the attribute that refused them, once they do.
_Refusal = (StorageError, _RefusedByAttribute)


def file_on_the_way(path: Path) -> Path | None:
    """The first folder of ``path``'s parents, from the top, that exists and is not a
    folder (a file, or a link to one); ``None`` when there is none or it cannot be told."""
    for parent in reversed(path.parents):
        try:
            if not stat.S_ISDIR(os.stat(parent).st_mode):
                return parent
        except OSError:
            return None
    return None


class MovedNotDurable(StorageError):
    """A move that was made, whose folder's fsync then failed: the entry is at its new
    place now, but a crash may put it back. The cause is the failed fsync's
    :class:`StorageError`; the caller tells the move as done, and says this as well."""

    def __init__(self, cause: StorageError) -> None:
        super().__init__(cause.action, cause.path, cause.cause)
        self.moved_to = ""  # the name it was given, where the caller knows it


class CacheNotRefreshed(StorageError):
    """The version is stored for good, but the latest link or the metadata is stale.

    Raised after the commit point: ``version`` is the path of the stored version. The
    caller reports it as stored (never as a failure to retry, which would store the
    same payload twice); the caches are repaired by the next write, by the watcher, or
    by ``verify --repair``.
    """

    def __init__(self, version: Path, cause: StorageError) -> None:
        super().__init__(cause.action, cause.path, cause.cause)
        self.version = version


class MetadataUnreadable(StorageError):
    """``_metadata.json`` exists but cannot be read (EACCES, EIO...), by a writer that
    would replace it. Its lifetime totals and last cleanup cannot be rebuilt from the
    versions, so it is left as it is (a missing or corrupt one is rebuilt instead)."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__("read", path, cause)

    def __str__(self) -> str:
        if self.errno == errno.EISDIR:
            # A folder holds no totals to keep; it only cannot be replaced.
            return (
                f"{super().__str__()}: a folder in the metadata's place is left as it is; "
                "move it away by hand (the metadata is then rebuilt from the versions, its "
                "lifetime totals counted afresh)"
            )
        advice = (
            f"{PERMISSION_ADVICE}, or chown the file to that user"
            if self.errno in _PERMISSION_ERRNOS
            else "fix the cause (or move the file away to count afresh), then run again"
        )
        return (
            f"{super().__str__()}: its totals cannot be rebuilt from the versions, so it is "
            f"left as it is; {advice}"
        )


class NotRegularFile(IngesterError, OSError):
    """An input that is not a regular file (a FIFO, a device, a folder, a socket)."""


class PayloadRejected(IngesterError, ValueError):
    """A drop that is not an acceptable payload; ``errors`` lists every problem found.

    ``kind`` is ``"schema"`` when the bytes are a JSON object that breaks the payload's
    rules, ``None`` for a problem with the bytes themselves (the reason says which).
    """

    def __init__(
        self, reason: str, errors: list[dict[str, Any]] | None = None, *, kind: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors: list[dict[str, Any]] = errors if errors is not None else [{"msg": reason}]
        self.kind = kind


class SettingError(IngesterError, ValueError):
    """A setting has a bad value; ``setting`` is its option name, e.g. ``--max-versions``."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


class LockHeld(IngesterError, RuntimeError):
    """Another process holds the lock ``path``; ``holder`` describes it.

    ``what`` names what the lock guards in the message: ``"history"`` (the one-writer
    lock) or ``"spool"`` (the one-watcher-per-spool lock).
    """

    def __init__(self, path: Path, holder: str, what: str = "history") -> None:
        super().__init__(f"the {what} is locked by {holder} ({path})")
        self.path = path
        self.holder = holder
        self.what = what


class VersionNotFound(IngesterError, LookupError):
    """The named version is not in the history (never was, or retention deleted it)."""


class VersionTooLarge(IngesterError, OSError):
    """A version larger than any drop can be, found before it was read whole.

    No drop is larger than the payload gate's limit, and versions are drops stored byte
    for byte, so such a file was put in the history by other means (by hand, a sparse
    file, a failing disk): it is damaged. ``name`` is the version, ``where`` the
    history's location, ``size`` its size in bytes (``None`` when only "over the limit"
    is known), ``limit`` the most a version may hold in bytes. ``reason`` says it the
    way the gate's refusals read (for "version NAME is damaged: REASON"); ``str()`` names
    the file. ``errno`` is ``EFBIG``, so a caller that only knows ``OSError`` reports it
    as a version it cannot read.
    """

    def __init__(self, name: str, where: str, size: int | None, limit: int) -> None:
        said = f"{size} bytes" if size is not None else f"over {limit} bytes"
        self.reason = f"larger than any drop: {said}, the limit is {limit}"
        OSError.__init__(self, errno.EFBIG, self.reason, f"{where}/{name}")
        self.name = name
        self.where = where
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return f"{self.where}/{self.name} is {self.reason}"


class VersionExists(IngesterError):
    """A version name already holds other bytes: versions are never overwritten."""

    def __init__(self, name: str, where: str) -> None:
        super().__init__(f"{where} already holds other bytes as version {name}")
        self.name = name


class MetadataMissing(IngesterError, LookupError):
    """The history has no ``_metadata.json`` (yet)."""


class ReportError(IngesterError):
    """A read command cannot answer; ``str()`` is the one-line message, ``code`` the exit."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class SnapshotError(IngesterError):
    """A snapshot cannot be taken; ``str()`` is the one-line message for the user."""


class ObjectStoreError(IngesterError, OSError):
    """A request to the object store failed.

    ``kind`` says how (``unreachable``, ``throttled``, ``server-error``, ``denied``,
    ``no-bucket``, ``exists``, ``rejected``; see :class:`ingester.mirror.objectstore.Failure`),
    ``detail`` the service's code and message. ``str()`` (and ``strerror``) is one line
    naming the target, never a credential; ``errno`` is ``EIO``.
    """

    def __init__(self, where: str, kind: str, detail: str) -> None:
        OSError.__init__(self, errno.EIO, f"{where}: {kind}: {detail}")
        self.kind = kind
        self.detail = detail

    def __str__(self) -> str:
        return str(self.strerror)


class ObjectStoreUnavailable(IngesterError, RuntimeError):
    """The object store cannot be used at all: boto3 is not installed (``str()`` says which
    extra to install), or no client can be made (a missing profile, a config that does
    not parse, a bad region, a failing credential process; ``str()`` says which)."""


class BadEndpoint(IngesterError, ValueError):
    """The object store's endpoint URL (``--endpoint-url`` or ``AWS_ENDPOINT_URL*``) is
    malformed; ``str()`` names it and what is wrong. A usage error (exit 2)."""


class RestoreError(IngesterError):
    """A restore from the object store cannot go on; ``str()`` is one line."""


def os_cause(exc: OSError) -> str:
    """The cause of an ``OSError`` with its errno's name: ``"Permission denied [EACCES]"``
    (for a line that names the path itself)."""
    name = errno.errorcode.get(exc.errno or 0)
    cause = exc.strerror or str(exc) or type(exc).__name__
    return f"{cause} [{name}]" if name else cause


def describe_os_error(exc: OSError) -> str:
    """One line for any ``OSError``: what failed, on which path, and the errno's name."""
    if isinstance(exc, StorageError):
        return str(exc)
    if exc.filename is not None:
        where = os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        return f"{where}: {os_cause(exc)}"
    return os_cause(exc)


# What the kernel answers when this user may not do something: the file is fine, the
# access rights are not, so no repair of the file would help.
_PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM)
_UNREADABLE_BY_PERMISSION = tuple(f"({os.strerror(code)})" for code in _PERMISSION_ERRNOS)

PERMISSION_ADVICE = (
    "a permissions problem, not damage; run as the service's user or a member of its group"
)
"""The advice for anything :func:`is_permission_problem` is true of."""


def unreadable(exc: OSError) -> str:
    """How a file this process cannot read is reported: ``"unreadable (Permission denied)"``."""
    return f"unreadable ({exc.strerror or exc})"


def is_permission_problem(problem: str | None) -> TypeGuard[str]:
    """Whether ``problem`` (made by :func:`unreadable`) comes from EACCES or EPERM.

    Such a problem is about who runs the command, not about the file: the advice is
    :data:`PERMISSION_ADVICE`, never a repair.
    """
    return problem is not None and problem.endswith(_UNREADABLE_BY_PERMISSION)


def missing_root(root: Path) -> str:
    """The one wording, for every command, of a root folder that does not exist."""
    return f"root folder {root} does not exist"


def shown(text: Any) -> str:
    """``text`` as an error message shows it: its ``repr``, cut to 40 characters (a value
    pasted by mistake may be a whole file; the line must stay one a reader takes in)."""
    quoted = repr(text)
    return quoted if len(quoted) <= 40 else quoted[:37] + "..."


def on_read_only_filesystem(folder: Path) -> bool:
    """Whether ``folder`` is on a filesystem mounted read-only (``False`` when that
    cannot be told)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def folder_not_entered(path: Path) -> Path | None:
    """The first folder above ``path``, from the top down, that this process may not
    enter (no search permission, by its effective ids), or None: which one to name when
    reaching ``path`` fails with EACCES, rather than ``path`` itself."""
    effective = os.access in os.supports_effective_ids
    for folder in reversed(path.parents):
        if not os.access(folder, os.X_OK, effective_ids=effective):
            return folder
    return None
