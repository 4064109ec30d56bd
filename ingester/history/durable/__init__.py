"""Durable file operations: the one place that writes, links, renames and fsyncs.

The recipe (python-atomicwrites' algorithm):

1. write into a temp file ``.tmp-*`` in the *target* folder (same filesystem, so the
   final step is atomic, and backups can exclude it by name);
2. flush and ``fsync`` it, so the data is on disk before any name points at it;
3. ``link`` (new names: never clobbers) or ``rename`` (replacements) it into place;
4. ``fsync`` the folder, so the name itself survives a power cut.

A failed fsync is a failed write: Linux may drop the dirty pages after reporting the
error, so a later fsync could "succeed" with the data gone. Every failure is raised as
:class:`StorageError` naming the path and the cause, and leaves no partial file under a
final name (the temp file is removed when possible; a leftover is swept on start).

The steps are :mod:`.steps`; a file written whole is :mod:`.staged`; several fsyncs (or
other steps) at once, :mod:`.fsyncs`; moves across filesystems and files written in pieces,
:mod:`.copies`. Import from this package: every name is here.
"""

from .copies import CopyAbandoned, CopyProgress, move_file, same_contents, streamed_file
from .fsyncs import FSYNC_THREAD_PREFIX, each_at_once, fsync_dirs, fsync_each
from .staged import SpareFile, StagedFile, link_file, replace_symlink, write_file
from .steps import (
    LINK_TEMP_PREFIX,
    OUTPUT_TEMP_PREFIX,
    READ_NOFOLLOW,
    SNAPSHOT_TEMP_PREFIX,
    SUBMIT_TEMP_PREFIX,
    TEMP_PREFIX,
    WRITE_TEMP_PREFIX,
    StorageError,
    StrPath,
    current_umask,
    cut_file,
    fsync_dir,
    fsync_fd,
    link_entry,
    make_folders,
    open_dir,
    publish_new,
    read_regular,
    remove_file,
    remove_stale_temps,
    rename_entry,
    rename_new,
    set_fd_mode,
    set_mode,
    take_back,
    unlink_entry,
    write_all,
)

__all__ = [
    "FSYNC_THREAD_PREFIX",
    "LINK_TEMP_PREFIX",
    "OUTPUT_TEMP_PREFIX",
    "READ_NOFOLLOW",
    "SNAPSHOT_TEMP_PREFIX",
    "SUBMIT_TEMP_PREFIX",
    "TEMP_PREFIX",
    "WRITE_TEMP_PREFIX",
    "CopyAbandoned",
    "CopyProgress",
    "SpareFile",
    "StagedFile",
    "StorageError",
    "StrPath",
    "current_umask",
    "cut_file",
    "each_at_once",
    "fsync_dir",
    "fsync_dirs",
    "fsync_each",
    "fsync_fd",
    "link_entry",
    "link_file",
    "make_folders",
    "move_file",
    "open_dir",
    "publish_new",
    "read_regular",
    "remove_file",
    "remove_stale_temps",
    "rename_entry",
    "rename_new",
    "replace_symlink",
    "same_contents",
    "set_fd_mode",
    "set_mode",
    "streamed_file",
    "take_back",
    "unlink_entry",
    "write_all",
    "write_file",
]
