"""Odd things where the caches live, under a real running ``ingester watch``.

The latest link and ``_metadata.json`` are caches: whatever sits in their place, drops
go on being stored. What cannot be replaced is said as ONE line for each try (the first
at start included), each promising its retry on the backoff's doubling waits, with what
to do; what can be replaced is replaced and said once. A metadata file the watcher's
user cannot read (another user's) is never replaced, as at a start: it may be an
operator's, and replacing it would hide the permission problem.

Root ignores permissions: the unreadable file is made real by running the watcher as
another uid (``setpriv``), and the immutable root by ``chattr +i``. Each such test skips
where this machine cannot do that, saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path

import pytest
from support import run_cli, wait_for
from support.capabilities import AS_OTHER, OTHER_UID, immutable, other_user_problem, others_folder
from support.watchproc import WatchProcess, drop, payload, versions

HISTORY = "console-usage-history"
LATEST = "console-usage-synced.json"
WATCH_ARGS = ("--retry-max", "30", "--rescan-interval", "0.3")

RETRY = re.compile(r"; retrying in (\S+) s$")


def lines_about(log: str, words: str) -> list[str]:
    """The log's WARNING and ERROR lines that contain ``words``, without their time."""
    found = []
    for line in log.splitlines():
        _date, _time, level, text = [*line.split(" ", 3), "", "", ""][:4]
        if level in ("WARNING", "ERROR") and words in text:
            found.append(f"{level} {text}")
    return found


def assert_one_line_a_try(said: list[str], line: str) -> None:
    """Each of ``said`` is ``line`` plus its retry, the waits doubling from 0.5 s: one line
    for each try, never a second line for one try (which would repeat a wait or lack it)."""
    assert said, "nothing said"
    waits = []
    for text in said:
        match = RETRY.search(text)
        assert match is not None and text[: match.start()] == line, (text, line)
        waits.append(float(match.group(1)))
    assert waits == [0.5 * 2**i for i in range(len(waits))], said


def assert_tries_then_left(log: str, about: str, line: str) -> None:
    """The log's lines about ``about``: ``line`` once a try (:func:`assert_one_line_a_try`),
    then once more from the last round at the stop, as left for the next start."""
    said = lines_about(log, about)
    assert said[-1] == f"{line}; left for the next start", log
    assert_one_line_a_try(said[:-1], line)


def meta_of(root: Path) -> dict[str, object]:
    try:
        loaded: dict[str, object] = json.loads((root / HISTORY / "_metadata.json").read_bytes())
    except (OSError, ValueError):
        return {}
    return loaded


# -- the latest link's place ----------------------------------------------------------------


@pytest.mark.parametrize("history", ["empty", "with a version"])
def test_a_folder_at_the_latest_path_is_one_line_a_try_saying_what_to_do(
    root: Path, tmp_path: Path, history: str
) -> None:
    if history != "empty":
        (tmp_path / "first.json").write_bytes(payload(0))
        assert run_cli(root, "ingest", str(tmp_path / "first.json")).returncode == 0
    latest = root / LATEST
    latest.unlink(missing_ok=True)
    latest.mkdir()
    (latest / "kept.txt").write_text("an operator's file")
    with WatchProcess(root, *WATCH_ARGS) as w:
        drop(root / "spool", "a.json", payload(1))
        w.wait_log("ingested a.json")
        w.wait_log("retrying in 1.0 s")  # a try after the drop, too
        assert w.stop() == 0
    line = (
        f"ERROR cannot refresh the latest link (drops are still stored): cannot replace "
        f"{latest}: it is a folder, which no link can replace: move it away by hand, and "
        "the link is made on the next try [EISDIR]"
    )
    assert_tries_then_left(w.log, str(latest), line)
    assert (latest / "kept.txt").read_text() == "an operator's file"
    assert meta_of(root)["versionCount"] == (1 if history == "empty" else 2)
    # Moved away, the next run makes the link.
    latest.rename(root / "moved-away")
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert [p.name for p in versions(root)][-1] == os.path.basename(os.readlink(latest))


@pytest.mark.parametrize("kind", ["fifo", "link to a folder"])
def test_a_fifo_or_a_link_to_a_folder_at_the_latest_path_is_replaced_and_said_once(
    root: Path, tmp_path: Path, kind: str
) -> None:
    latest = root / LATEST
    if kind == "fifo":
        os.mkfifo(latest)
        why = "a special file (not a link, not a regular file)"
    else:
        (tmp_path / "elsewhere").mkdir()
        latest.symlink_to(tmp_path / "elsewhere")
        why = "points at a version that is gone"
    with WatchProcess(root, *WATCH_ARGS) as w:
        drop(root / "spool", "a.json", payload(1))
        w.wait_log("ingested a.json")
        wait_for(lambda: latest.is_symlink() and latest.read_bytes() == payload(1), what="link")
        assert w.stop() == 0
    assert lines_about(w.log, "latest") == [f"WARNING latest link repaired ({why})"], w.log
    if kind != "fifo":
        assert (tmp_path / "elsewhere").is_dir()  # a link is replaced, never followed


def test_an_immutable_root_is_one_line_a_try_naming_the_folder_to_check(
    root: Path, can_chattr: None
) -> None:
    assert run_cli(root, "init").returncode == 0
    latest = root / LATEST
    with contextlib.ExitStack() as stack:
        w = stack.enter_context(WatchProcess(root, *WATCH_ARGS))
        stack.enter_context(immutable(root))
        drop(root / "spool", "a.json", payload(1))
        w.wait_log("ingested a.json")
        w.wait_log("retrying in 1.0 s")
        assert w.stop() == 0
    line = (
        f"ERROR cannot refresh the latest link (drops are still stored): cannot create "
        f"{latest}: Operation not permitted: its folder {root} is immutable (chattr -i {root} "
        "clears that) [EPERM]"
    )
    assert_tries_then_left(w.log, str(latest), line)
    assert [p.read_bytes() for p in versions(root)] == [payload(1)]


# -- the metadata's place ---------------------------------------------------------------------


def test_a_folder_made_at_the_metadata_path_is_one_line_a_try_and_drops_go_on(
    root: Path,
) -> None:
    meta = root / HISTORY / "_metadata.json"
    with WatchProcess(root, *WATCH_ARGS) as w:
        drop(root / "spool", "a.json", payload(1))
        w.wait_log("ingested a.json")
        wait_for(lambda: meta_of(root).get("versionCount") == 1, what="metadata written")
        # While idle: the rescan's look at the caches finds it. Put in place as one
        # step, the watcher held: a rescan between the unlink and the mkdir rightly
        # writes the missing metadata again, and the mkdir then fails (EEXIST).
        with w.held():
            meta.unlink()
            meta.mkdir()
        w.wait_log("retrying in 1.0 s")
        drop(root / "spool", "b.json", payload(2))
        w.wait_log("ingested b.json")
        meta.rmdir()
        wait_for(lambda: meta_of(root).get("versionCount") == 2, what="metadata rewritten")
        assert w.stop() == 0
    line = (
        f"ERROR cannot finish claims, clean up or write the metadata: cannot read {meta}: "
        "Is a directory [EISDIR]: a folder in the metadata's place is left as it is; move "
        "it away by hand (the metadata is then rebuilt from the versions, its lifetime "
        "totals counted afresh)"
    )
    said = lines_about(w.log, "metadata")
    # Once moved away, the repair is said once, after it was made (not promised before).
    assert said[-1].startswith("WARNING metadata rebuilt from a scan (it was "), said
    assert_one_line_a_try(said[:-1], line)


WHY_NOT = other_user_problem()


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_metadata_file_the_running_watcher_cannot_read_is_kept_and_said() -> None:
    """Root leaves ``_metadata.json`` its own and 0600 under a watcher run as the service's
    user: the watcher goes on storing drops, never replaces the file, and says so in one
    line a try, naming the file and the fix; once given back, it is rewritten."""
    with others_folder("ingester-meta-run-") as root:
        meta = root / HISTORY / "_metadata.json"
        owner = (OTHER_UID, OTHER_UID)
        with WatchProcess(root, *WATCH_ARGS, wrapper=tuple(AS_OTHER)) as w:
            drop(root / "spool", "a.json", payload(1), owner=owner)
            w.wait_log("ingested a.json")
            wait_for(lambda: meta_of(root).get("versionCount") == 1, what="metadata written")
            # As `cp -p` by root would leave it: a whole new file, root's, 0600.
            theirs = json.dumps({**meta_of(root), "totalVersionsCreated": 900}).encode()
            placed = meta.with_name(".placed")
            placed.write_bytes(theirs)
            placed.chmod(0o600)
            placed.rename(meta)
            drop(root / "spool", "b.json", payload(2), owner=owner)
            w.wait_log("ingested b.json")
            w.wait_log("retrying in 1.0 s")
            assert meta.read_bytes() == theirs and meta.stat().st_uid == 0
            os.chown(meta, *owner)
            wait_for(lambda: meta_of(root).get("versionCount") == 2, what="rewritten once ours")
            assert w.stop() == 0
        line = (
            f"ERROR cannot finish claims, clean up or write the metadata: cannot read {meta}: "
            "Permission denied [EACCES]: its totals cannot be rebuilt from the versions, so "
            "it is left as it is; a permissions problem, not damage; run as the service's "
            "user or a member of its group, or chown the file to that user"
        )
        said = lines_about(w.log, "metadata")
        if said[-1].startswith("WARNING metadata rebuilt"):
            said = said[:-1]  # found by the rescan's look first, said once repaired
        assert_one_line_a_try(said, line)
        assert sorted(p.read_bytes() for p in versions(root)) == sorted([payload(1), payload(2)])
        assert "Traceback" not in w.log


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_latest_file_the_running_watcher_cannot_read_is_kept_and_said() -> None:
    """Root puts a file of its own, 0600, in the latest link's place under a watcher run as
    the service's user: it may hold a snapshot no version holds, so it stays, and each
    try says what to do; drops go on being stored."""
    with others_folder("ingester-latest-run-") as root:
        latest = root / LATEST
        owner = (OTHER_UID, OTHER_UID)
        with WatchProcess(root, *WATCH_ARGS, wrapper=tuple(AS_OTHER)) as w:
            drop(root / "spool", "a.json", payload(1), owner=owner)
            w.wait_log("ingested a.json")
            wait_for(lambda: latest.is_symlink(), what="the link made")
            placed = root / ".placed"
            placed.write_bytes(payload(99))
            placed.chmod(0o600)
            placed.rename(latest)
            drop(root / "spool", "b.json", payload(2), owner=owner)
            w.wait_log("ingested b.json")
            w.wait_log("retrying in 1.0 s")
            assert w.stop() == 0
        assert latest.read_bytes() == payload(99) and latest.stat().st_uid == 0
        line = (
            f"ERROR cannot refresh the latest link (drops are still stored): cannot replace "
            f"{latest}: cannot tell whether it holds a snapshot that no version holds (cannot "
            f"open {latest}: Permission denied [EACCES]), so it is kept; give what it names "
            "to the service's user (chown), then stop the watcher and run 'ingester adopt' "
            "(or remove the file) [EACCES]"
        )
        assert_tries_then_left(w.log, str(latest), line)
        assert sorted(p.read_bytes() for p in versions(root)) == sorted([payload(1), payload(2)])


def test_totals_written_by_other_means_while_it_runs_never_decrease(root: Path) -> None:
    # A metadata file restored from a backup while the watcher runs holds larger totals
    # than the watcher counted: the next write keeps the larger ones.
    spool = root / "spool"
    with WatchProcess(root, *WATCH_ARGS) as watcher:
        drop(spool, "a.json", payload(1))
        watcher.wait_log("ingested a.json")
        wait_for(lambda: meta_of(root).get("versionCount") == 1, what="the metadata written")
        restored = {**meta_of(root), "totalVersionsCreated": 900, "totalVersionsDeleted": 800}
        staged = root / HISTORY / ".tmp-restored"
        staged.write_text(json.dumps(restored))
        os.replace(staged, root / HISTORY / "_metadata.json")
        drop(spool, "b.json", payload(2))
        watcher.wait_log("ingested b.json")
        wait_for(lambda: meta_of(root).get("versionCount") == 2, what="the metadata rewritten")
    meta = meta_of(root)
    assert (meta["totalVersionsCreated"], meta["totalVersionsDeleted"]) == (900, 800), meta


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_special_file_made_at_the_metadata_path_is_replaced_and_said_once(
    root: Path, kind: str
) -> None:
    # Neither holds any totals: both are replaced as a corrupt file is, with one line
    # (a socket was kept before, with an ERROR on every try: it cannot be opened).
    with WatchProcess(root, *WATCH_ARGS, "--rescan-interval", "0.3") as w:
        drop(root / "spool", "a.json", payload(1))
        w.wait_log("ingested a.json")
        wait_for(lambda: meta_of(root).get("versionCount") == 1, what="the metadata written")
        meta = root / HISTORY / "_metadata.json"
        # Put in place as one step, the watcher held: a rescan (every 0.3 s) between
        # the unlink and the special file's making rightly writes the missing metadata
        # again ("missing" said too), and the mkfifo then fails (EEXIST).
        with w.held():
            meta.unlink()
            if kind == "fifo":
                os.mkfifo(meta)
            else:
                # Bound where the path is short enough for AF_UNIX, then moved into
                # place (the socket file stays once it is closed).
                short = Path(tempfile.mkdtemp(dir="/tmp")) / "s"
                with socket.socket(socket.AF_UNIX) as listener:
                    listener.bind(str(short))
                try:
                    os.rename(short, meta)
                except OSError as exc:
                    pytest.skip(f"cannot move a socket from /tmp next to the metadata: {exc}")
                finally:
                    with contextlib.suppress(OSError):
                        short.unlink()
                    short.parent.rmdir()
        wait_for(lambda: meta.is_file() and not meta.is_socket(), what="the metadata rebuilt")
        assert w.stop() == 0
    said = lines_about(w.log, "metadata")
    assert said == ["WARNING metadata rebuilt from a scan (it was corrupt)"], w.log
    assert meta_of(root).get("versionCount") == 1
