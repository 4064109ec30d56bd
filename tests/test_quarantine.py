"""Quarantine: a drop set aside is there with its reason file, or neither is.

The quarantine (``--rejected-dir``) is put on a small tmpfs, another filesystem than the
spool's, so a drop is set aside by a copy: a sparse drop of gigabytes must not cost
gigabytes, and a full filesystem (ENOSPC, real) or an immutable drop (``chattr +i``:
EPERM even for root) must leave the drop in the spool, with nothing of it in the
quarantine and nothing counted as rejected, until the fault clears. A watcher killed
(SIGKILL, through strace) between the reason file and the move must not leave a
rejection counted either. A copy of many pieces (slowed by strace) keeps systemd's
watchdog fed, piece by piece, and the watcher goes on after it; one in the backlog taken
before READY=1 extends the start-up timeout the same way; a stop amid it gives the copy
up at its next piece, and leaves the drop in the spool for the next start.

Skipped, with the reason, when not root or when chattr/mount/strace do not work here.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import run_cli, wait_for
from support.capabilities import (
    STRACE,
    immutable,
    needs_strace_root,
    quarantine_fsyncs,
    run_held_after,
    strace_problem,
    tmpfs,
    traced_program,
)
from support.sdnotify import NotifyListener
from support.watchproc import WatchProcess, drop, payload, stored_contents
from test_integrity import in_syscall, syscall_delayed, wait_in_syscall

GIB = 1 << 30
MIB = 1 << 20
REASON = ".reason.json"


@pytest.fixture
def quarantine(tmp_path: Path, can_mount: None) -> Iterator[Path]:
    """``--rejected-dir``, on a 4 MiB tmpfs of its own (unmounted after the test)."""
    with tmpfs(tmp_path / "other-fs", size="4m") as fs:
        yield fs / "rejected"


def sparse_drop(spool: Path, name: str, size: int, data: dict[int, bytes]) -> Path:
    """A drop of ``size`` bytes that holds only ``data`` (offset -> bytes), the rest holes;
    written in ``tmp/`` and renamed in, as a writer would."""
    staged = spool / "tmp" / f".{name}.part"
    staged.parent.mkdir(parents=True, exist_ok=True)
    with staged.open("wb") as handle:
        handle.truncate(size)
        for offset, chunk in data.items():
            handle.seek(offset)
            handle.write(chunk)
    final = spool / name
    os.rename(staged, final)
    return final


def rejected_counts(root: Path, where: Path) -> tuple[int, int]:
    """``status --json``'s ``rejected.count`` and ``check --json``'s ``rejectedLastHour``."""
    status = run_cli(root, "--rejected-dir", str(where), "status", "--json")
    assert status.returncode == 0, status.stderr
    check = run_cli(root, "--rejected-dir", str(where), "check", "--json")
    assert "Traceback" not in check.stderr, check.stderr
    return json.loads(status.stdout)["rejected"]["count"], json.loads(check.stdout)[
        "rejectedLastHour"
    ]


def once(root: Path, where: Path, *wrapper: str) -> tuple[int, str]:
    done = run_cli(root, "--rejected-dir", str(where), "watch", "--once", wrapper=wrapper)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stderr


def errors_about(log: str, name: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line and f" {name} " in line]


def test_a_sparse_drop_of_gigabytes_is_set_aside_as_it_is_without_writing_its_holes(
    root: Path, quarantine: Path
) -> None:
    spool = root / "spool"
    sparse_drop(spool, "big.json", 3 * GIB, {})
    marked = {0: b"HEAD", 40 * MIB: b"MIDDLE", 64 * MIB - 4: b"TAIL"}
    original = sparse_drop(spool, "marked.json", 64 * MIB, marked)
    kept = root / "marked.orig"  # same filesystem: a rename keeps it as it is
    os.link(original, kept)
    drop(spool, "zz-good.json", payload(1))

    code, log = once(root, quarantine)

    assert code == 0, log
    assert stored_contents(root) == {payload(1): 1}, log
    assert not (spool / "big.json").exists() and not (spool / "marked.json").exists()
    big = os.stat(quarantine / "big.json")
    assert big.st_size == 3 * GIB
    assert big.st_blocks * 512 <= 64 * 1024, big  # the holes were not written
    assert filecmp.cmp(kept, quarantine / "marked.json", shallow=False)
    assert os.stat(quarantine / "marked.json").st_blocks * 512 <= 1 * MIB
    for name in ("big.json", "marked.json"):
        record = json.loads((quarantine / f"{name}{REASON}").read_text())
        assert record["file"] == name and "over the limit" in record["reason"], record
    assert rejected_counts(root, quarantine) == (2, 2)


def test_a_drop_the_quarantine_has_no_room_for_waits_in_the_spool_until_room_returns(
    root: Path, quarantine: Path
) -> None:
    spool = root / "spool"
    quarantine.mkdir()
    filler = quarantine.parent / "filler"
    filler.write_bytes(b"\1" * (3 * MIB + MIB // 2))  # room for a reason file, not the drop
    data = os.urandom(2 * MIB)  # over --max-bytes, and no holes to skip
    drop(spool, "huge.json", data)

    code, log = once(root, quarantine)

    assert code == 1, log
    assert (spool / "huge.json").read_bytes() == data
    assert os.listdir(quarantine) == []  # no reason file, no copy, no temp file
    assert rejected_counts(root, quarantine) == (0, 0)
    [error] = errors_about(log, "huge.json")
    said = re.escape(
        f"cannot copy {spool / 'huge.json'} into {quarantine}: No space left on device: "
        f"{2 * MIB} bytes of data to copy, "
    )
    assert re.search(
        f"{said}[0-9]+ free \\[ENOSPC\\]; left in the spool for the next start$", error
    ), error

    with WatchProcess(
        root, "--retry-max", "0.5", global_args=("--rejected-dir", str(quarantine))
    ) as watcher:
        watcher.wait_log("cannot set aside huge.json", count=2)  # retried, still no room
        drop(spool, "good.json", payload(2))  # the drop waiting holds nothing else up
        wait_for(lambda: stored_contents(root) == {payload(2): 1}, what="good drop stored")
        assert rejected_counts(root, quarantine) == (0, 0)
        filler.unlink()
        # Not its name leaving the spool: it leaves by its claim before the copy begins.
        wait_for(lambda: "rejected huge.json" in watcher.log, what="huge.json set aside")
        assert watcher.stop() == 0, watcher.log
    assert (quarantine / "huge.json").read_bytes() == data
    assert json.loads((quarantine / f"huge.json{REASON}").read_text())["file"] == "huge.json"
    assert sorted(os.listdir(quarantine)) == ["huge.json", f"huge.json{REASON}"]
    assert rejected_counts(root, quarantine) == (1, 1)


@pytest.mark.parametrize("where", ["other-fs", "spool"])
def test_an_immutable_drop_is_set_aside_once_when_it_can_be_moved(
    root: Path, tmp_path: Path, where: str, can_chattr: None, can_mount: None
) -> None:
    """Across filesystems the copy is made, then the drop cannot be removed: the copy is
    taken back (kept, each retry would add one more under a new name). Within one, the
    rename fails. Either way nothing of it is in the quarantine, nor counted."""
    spool = root / "spool"
    with contextlib.ExitStack() as stack:
        if where == "other-fs":
            quarantine = stack.enter_context(tmpfs(tmp_path / "other-fs")) / "rejected"
        else:
            quarantine = spool / "rejected"
        bad = drop(spool, "bad.json", b"{not json")
        with immutable(bad):
            for _ in range(2):
                code, log = once(root, quarantine)
                assert code == 1, log
                [error] = errors_about(log, "bad.json")
                assert error.endswith(
                    f"cannot move {bad}: Operation not permitted: it is immutable (chattr -i "
                    f"{bad} clears that) [EPERM]; "
                    "left in the spool for the next start"
                ), error
            assert [p for p in os.listdir(quarantine) if not p.startswith(".")] == []
            assert rejected_counts(root, quarantine) == (0, 0)
        code, log = once(root, quarantine)
        assert code == 0, log
        assert sorted(os.listdir(quarantine)) == ["bad.json", f"bad.json{REASON}"]
        assert (quarantine / "bad.json").read_bytes() == b"{not json"
        assert rejected_counts(root, quarantine) == (1, 1)


@needs_strace_root
def test_a_watcher_killed_between_the_reason_file_and_the_move_counts_no_rejection(
    root: Path, tmp_path: Path
) -> None:
    """SIGKILL right after the reason file is in place (at the quarantine folder's
    fsync), before the drop is moved: the reason file stands alone, and no count takes
    it for a rejection. The next run sets the drop aside once, under that same name."""
    assert run_cli(root, "init").returncode == 0
    spool, quarantine = root / "spool", root / "spool" / "rejected"
    after_reason, _after_move = quarantine_fsyncs(root, tmp_path / "fsync.log", b"{not json")
    (spool / "bad.json").write_bytes(b"{not json")
    inject = (
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        f"inject=fsync:signal=SIGKILL:when={after_reason}",
    )

    code, log = once(root, quarantine, STRACE, *inject)

    assert code != 0, log  # killed
    assert (quarantine / f"bad.json{REASON}").exists() and not (quarantine / "bad.json").exists()
    assert (spool / "bad.json").exists()
    assert rejected_counts(root, quarantine) == (2, 2)  # the two warm-up drops only
    code, log = once(root, quarantine)
    assert code == 0, log
    assert (quarantine / "bad.json").read_bytes() == b"{not json"
    assert not [p for p in os.listdir(quarantine) if p.startswith("bad-")]
    assert rejected_counts(root, quarantine) == (3, 3)


@pytest.mark.parametrize("run", ["at once", "killed amid its move"])
def test_a_drop_whose_name_is_not_utf8_has_it_in_its_reason_file_as_the_log_says_it(
    root: Path, run: str
) -> None:
    """A drop named with a byte that is not UTF-8 keeps that very name in the
    quarantine, and its reason file names it as the log does, each such byte as
    ``\\xNN``: never ``\\udcff``, which names no byte. Set aside again after a kill
    amid its move (SIGKILL as it is linked in, where no rename refuses to replace), it
    is found for the same drop: set aside once, under its name."""
    assert run_cli(root, "init").returncode == 0
    spool, quarantine = root / "spool", root / "spool" / "rejected"
    name = os.fsdecode(b"bad\xff.json")
    (spool / name).write_bytes(b"{not json")
    if run != "at once":
        inject = (
            "-f", "-qq", "-o", "/dev/null", "-P", str(quarantine / name),
            "-e", "inject=renameat2:error=ENOSYS",
            "-e", "inject=link,linkat:signal=SIGKILL",
        )  # fmt: skip
        if strace_problem() is not None:
            pytest.skip(strace_problem() or "")
        code, log = once(root, quarantine, STRACE, *inject)
        assert code != 0, log  # killed

    code, log = once(root, quarantine)

    assert code == 0, log
    assert "rejected bad\\xff.json: " in log
    assert sorted(os.listdir(os.fsencode(quarantine))) == [
        b"bad\xff.json",
        b"bad\xff.json" + REASON.encode(),
    ]
    text = (quarantine / (name + REASON)).read_text()
    assert json.loads(text)["file"] == "bad\\xff.json", text
    assert "\\udc" not in text, text
    assert (quarantine / name).read_bytes() == b"{not json"
    assert os.listdir(spool / ".claimed") == []


@needs_strace_root
def test_a_drop_not_named_in_utf8_killed_before_its_claim_goes_is_set_aside_once_beside_a_namesake(
    root: Path, quarantine: Path
) -> None:
    """A drop whose name is not UTF-8, set aside into a quarantine on another
    filesystem that holds a drop of that name already (from an earlier day), is given
    ``bad\xff-1.json`` there; its reason file names it as ``bad\xff.json``. Killed
    once its copy has its name, before its claim is removed, the next run must find
    the copy its own by that reason file: set aside once, never again as
    ``bad\xff-1-1.json``."""
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    name = os.fsdecode(b"bad\xff.json")
    quarantine.mkdir()
    (quarantine / name).write_bytes(b'{"earlier": ')
    (spool / name).write_bytes(b"{not json")
    claim = spool / ".claimed" / ("rejecting." + os.fsdecode(b"bad\xff-1.json"))
    killed_at_the_claims_unlink(root, quarantine, claim)
    code, log = once(root, quarantine)
    assert code == 0, log
    assert sorted(os.listdir(os.fsencode(quarantine))) == [
        b"bad\xff-1.json",
        b"bad\xff-1.json" + REASON.encode(),
        b"bad\xff.json",
    ], log
    assert (quarantine / os.fsdecode(b"bad\xff-1.json")).read_bytes() == b"{not json"
    assert os.listdir(spool / ".claimed") == []
    assert not [n for n in os.listdir(spool) if n.endswith(".json")], log


@pytest.mark.parametrize("said", ["a\u0000.json", "other.json"])
def test_a_drop_on_its_way_whose_reason_file_names_another_drop_is_put_back_to_be_judged(
    root: Path, said: str
) -> None:
    """A claim on its way to the quarantine as ``x-1.json`` is put back in the spool on
    start under the drop's own name, which its reason file gives; a reason file that
    names no drop that could have been given ``x-1.json`` (edited by hand, or holding a
    NUL, which no file name can) gives no name: put back as ``x-1.json``, the drop is
    judged again and set aside once, never left under a name no one judges."""
    assert run_cli(root, "init").returncode == 0
    spool, quarantine = root / "spool", root / "spool" / "rejected"
    claim = spool / ".claimed" / "rejecting.x-1.json"
    claim.parent.mkdir(exist_ok=True)
    claim.write_bytes(b"{not json")
    quarantine.mkdir(exist_ok=True)
    (quarantine / f"x-1.json{REASON}").write_text(json.dumps({"file": said}))

    code, log = once(root, quarantine)

    assert code == 0, log
    assert "put back in the spool as x-1.json" in log, log
    kept = [p.read_bytes() for p in quarantine.iterdir() if not p.name.endswith(REASON)]
    assert kept == [b"{not json"], log
    assert os.listdir(spool / ".claimed") == []
    assert not [n for n in os.listdir(spool) if n not in {".claimed", ".lock", "rejected", "tmp"}]


def test_a_drop_name_too_long_for_its_reason_file_is_shortened_in_the_quarantine_as_documented(
    root: Path,
) -> None:
    """A name over 235 bytes leaves no room for ``.reason.json`` in a file name: in the
    quarantine it is its first 217 bytes (never half a UTF-8 character), ``-``, 12 hex
    digits of the whole name's SHA-256, ``.json``; the reason file keeps the whole name."""
    assert run_cli(root, "init").returncode == 0
    spool, quarantine = root / "spool", root / "spool" / "rejected"
    name = "é" * 120 + ".json"  # 245 bytes, two to a character: byte 217 splits one
    drop(spool, name, b"{not json")

    code, log = once(root, quarantine)

    assert code == 0, log
    raw = name.encode()
    short = raw[:216].decode() + "-" + hashlib.sha256(raw).hexdigest()[:12] + ".json"
    assert sorted(os.listdir(quarantine)) == [short, short + REASON], log
    assert json.loads((quarantine / (short + REASON)).read_text())["file"] == name


def test_an_invalid_drop_is_never_moved_through_a_claim_folder_put_in_place_of_ours(
    root: Path, tmp_path: Path
) -> None:
    """Someone who may write in the spool swaps ``.claimed/`` for a symlink to a folder of
    theirs while the watcher runs: the invalid drop is not renamed into it on its way to
    the quarantine. It waits in the spool, the folder named as unsafe, and nothing of it
    reaches that folder; valid drops stop at their own check of the folder the same way."""
    spool, elsewhere = root / "spool", tmp_path / "elsewhere"
    elsewhere.mkdir()
    with WatchProcess(root) as watcher:
        os.rename(spool / ".claimed", tmp_path / "ours")
        (spool / ".claimed").symlink_to(elsewhere)
        drop(spool, "bad.json", b"{not json")
        watcher.wait_log("cannot set aside bad.json")
        assert watcher.stop() == 0, watcher.log
    [error] = errors_about(watcher.log, "bad.json")
    assert f"cannot use the claim folder {spool / '.claimed'}: unsafe: it is a symlink" in error
    assert (spool / "bad.json").read_bytes() == b"{not json"
    assert os.listdir(elsewhere) == []
    assert [p for p in os.listdir(spool / "rejected") if not p.startswith(".")] == []


def test_a_drop_on_its_way_to_the_quarantine_when_the_spool_is_moved_away_is_set_aside_once(
    root: Path,
) -> None:
    """An invalid drop the watcher had taken out of the spool on its way to the
    quarantine (``.claimed/rejecting.bad.json``) when the spool folder was moved away is
    the watcher's to finish, like any drop it had taken: brought back, put in the new
    spool, and set aside there once; nothing is left in the folder moved away."""
    spool, moved = root / "spool", root / "spool.old"
    with WatchProcess(root) as watcher:
        # Stopped, so that the move lands between two of its steps.
        watcher.proc.send_signal(signal.SIGSTOP)
        try:
            (spool / ".claimed" / "rejecting.bad.json").write_bytes(b"{not json")
            spool.rename(moved)
        finally:
            watcher.proc.send_signal(signal.SIGCONT)
        watcher.wait_log("brought 1 taken drop(s) back")
        wait_for(lambda: "rejected bad.json" in watcher.log, what="bad.json set aside")
        assert watcher.stop() == 0, watcher.log
    assert list((moved / ".claimed").iterdir()) == []
    assert (spool / "rejected" / "bad.json").read_bytes() == b"{not json"
    assert not (spool / "bad.json").exists()
    assert os.listdir(spool / ".claimed") == []


def killed_at_the_claims_unlink(root: Path, quarantine: Path, claim: Path, *more: str) -> str:
    """Run ``watch --once`` under strace, killed (SIGKILL) as it unlinks ``claim``, with
    the ``more`` strace injections for that path too; its log. The claim is still there."""
    inject = ("-f", "-qq", "-o", "/dev/null", "-P", str(claim))
    inject += tuple(arg for given in more for arg in ("-e", given))
    inject += ("-e", "inject=unlink,unlinkat:signal=SIGKILL")
    code, log = once(root, quarantine, STRACE, *inject)
    assert code != 0, log  # killed
    assert claim.exists(), log
    return log


def rerun_sets_it_aside_once(root: Path, quarantine: Path) -> None:
    """The run after a kill amid ``bad.json``'s move finishes it: the drop is gone from
    the spool and set aside once, under its own name, beside its one reason file."""
    code, log = once(root, quarantine)
    assert code == 0, log
    assert not (root / "spool" / "bad.json").exists(), log
    assert sorted(os.listdir(quarantine)) == ["bad.json", f"bad.json{REASON}"], log
    assert (quarantine / "bad.json").read_bytes() == b"{not json"
    assert rejected_counts(root, quarantine) == (1, 1)


@needs_strace_root
@pytest.mark.parametrize("killed", ["claimed", "linked"])
def test_a_watcher_killed_amid_a_move_without_renameat2_sets_the_drop_aside_once(
    root: Path, killed: str
) -> None:
    """Where the kernel or filesystem has no no-replace rename (NFS: strace answers
    ``renameat2`` with ENOSYS), the drop leaves the spool by a rename into ``.claimed/``,
    is linked from there into the quarantine, and its claim is unlinked. SIGKILL before
    the link (the drop claimed alone) or before the unlink (one file under both names)
    leaves a claim on its way to the quarantine. The next run finishes it: the drop is
    set aside once, under its name, never a second time as ``bad-1.json``."""
    assert run_cli(root, "init").returncode == 0
    spool, quarantine = root / "spool", root / "spool" / "rejected"
    claim = spool / ".claimed" / "rejecting.bad.json"
    (spool / "bad.json").write_bytes(b"{not json")
    at = {"claimed": ("link,linkat", quarantine / "bad.json"), "linked": ("unlink,unlinkat", claim)}
    calls, path = at[killed]
    inject = (
        "-f", "-qq", "-o", "/dev/null", "-P", str(path),
        "-e", "inject=renameat2:error=ENOSYS",
        "-e", f"inject={calls}:signal=SIGKILL",
    )  # fmt: skip

    code, log = once(root, quarantine, STRACE, *inject)

    assert code != 0, log  # killed
    assert not (spool / "bad.json").exists(), log
    if killed == "claimed":
        assert claim.exists() and not (quarantine / "bad.json").exists(), log
    else:
        assert os.path.samefile(claim, quarantine / "bad.json"), log
    rerun_sets_it_aside_once(root, quarantine)
    assert os.listdir(spool / ".claimed") == []


@needs_strace_root
def test_a_drop_put_back_under_a_fresh_name_by_a_run_killed_before_its_claim_went_is_set_aside_once(
    root: Path,
) -> None:
    """A drop on its way to the quarantine when the watcher stopped is put back in the
    spool on start; its name taken by the writer's next snapshot, it takes a fresh one.
    Where no rename refuses to replace (NFS: strace answers ``renameat2`` with ENOSYS)
    that is a link then the unlink of its claim, and a SIGKILL between leaves one file
    under both names. The next run must find the drop in the spool already, not put it
    back a second time under another fresh name: set aside once, the snapshot stored
    once."""
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    quarantine = spool / "rejected"
    bad, good = b"{not json", payload(43)
    claim = spool / ".claimed" / "rejecting.scrape.json"
    claim.parent.mkdir(exist_ok=True)
    claim.write_bytes(bad)
    drop(spool, "scrape.json", good)
    log = killed_at_the_claims_unlink(root, quarantine, claim, "inject=renameat2:error=ENOSYS")
    assert claim.stat().st_nlink == 2, log
    code, log = once(root, quarantine)
    assert code == 0, log
    assert stored_contents(root) == {good: 1}, log
    kept = [p.read_bytes() for p in quarantine.iterdir() if not p.name.endswith(REASON)]
    assert kept == [bad], log
    assert not [n for n in os.listdir(spool) if n.endswith(".json")], log
    assert os.listdir(spool / ".claimed") == []


@needs_strace_root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers are x86_64's")
@pytest.mark.parametrize("where", ["spool without renameat2", "other-fs"])
def test_a_drop_renamed_onto_the_name_of_one_set_aside_as_that_name_goes_is_kept(
    root: Path, quarantine: Path, where: str
) -> None:
    """An invalid drop must leave the spool by one rename, never by an unlink of its
    spool name once it is in the quarantine: a writer renaming its next snapshot onto
    that name just before the unlink (held open here by holding up every unlink of the
    name) would lose it. Where there is no no-replace rename (NFS: strace answers
    ``renameat2`` with ENOSYS) the drop would be linked into the quarantine first; on
    another filesystem, copied there first, its name compared with the file copied
    right before the unlink, which no look can keep a rename out of. The new snapshot
    is stored, or still waits: never lost; the invalid one is set aside once."""
    spool = root / "spool"
    if where != "other-fs":
        quarantine = spool / "rejected"
    bad, good = b"{not json", payload(31)
    held = (
        STRACE, "-f", "-qq", "-o", "/dev/null", "-P", str(spool / "scrape.json"),
        "-e", "inject=renameat2:error=ENOSYS",
        "-e", "inject=unlink,unlinkat:delay_enter=5000000", "--",
    )  # fmt: skip
    args = ("--rejected-dir", str(quarantine))
    with WatchProcess(root, global_args=args, wrapper=held) as watcher:
        program = traced_program(watcher.proc.pid)
        drop(spool, "scrape.json", bad)

        def name_going() -> bool:
            # Inside the unlink of the spool's name, or out of the spool by its claim.
            inside = in_syscall(program, UNLINK) or in_syscall(program, UNLINKAT)
            gone = not os.path.lexists(spool / "scrape.json")
            return inside or (gone and os.path.lexists(quarantine / "scrape.json"))

        wait_for(name_going, 20, "the invalid drop's spool name being taken away")
        drop(spool, "scrape.json", good)  # the writer's: onto the name being taken away
        wait_for(lambda: stored_contents(root) == {good: 1}, 30, "the new snapshot stored")
        assert watcher.stop() == 0, watcher.log
    assert not (spool / "scrape.json").exists(), watcher.log
    assert sorted(os.listdir(quarantine)) == ["scrape.json", f"scrape.json{REASON}"]
    assert (quarantine / "scrape.json").read_bytes() == bad


@needs_strace_root
def test_a_watcher_killed_between_a_copy_to_another_filesystem_and_the_unlink_sets_it_aside_once(
    root: Path, quarantine: Path
) -> None:
    """Into a quarantine on another filesystem the drop is claimed (renamed into
    ``.claimed/``), copied, the copy given its name beside the reason file, and the
    claim then removed. SIGKILL at that removal leaves the drop in both places. The
    next run finds its copy complete beside a reason file no process holds, naming it:
    it removes the claim, and sets nothing aside a second time."""
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    claim = spool / ".claimed" / "rejecting.bad.json"
    (spool / "bad.json").write_bytes(b"{not json")
    log = killed_at_the_claims_unlink(root, quarantine, claim)
    assert (quarantine / "bad.json").exists(), log
    assert not (spool / "bad.json").exists(), log
    rerun_sets_it_aside_once(root, quarantine)
    assert os.listdir(spool / ".claimed") == []


@needs_strace_root
def test_two_watchers_sharing_a_quarantine_keep_both_of_their_rejected_drops(
    tmp_path: Path,
) -> None:
    """Two watchers (two histories, two spools) given one ``--rejected-dir`` each set
    aside an invalid drop of the same name at the same moment: both drops are kept,
    one as ``bad.json`` and the other under a numeric suffix, each with its own reason
    file. Nothing set aside replaces anything: a reason file whose move is under way
    is never taken for one a crash left alone. strace's delay of each rename (200 ms,
    as a slow disk would) widens the window between the reason file and the move so
    that the two meet in it."""
    shared_quarantine = tmp_path / "shared-rejected"
    shared_quarantine.mkdir()
    roots = [tmp_path / "first", tmp_path / "second"]
    slow_renames = (
        STRACE, "-f", "-qq", "-o", "/dev/null",
        "-e", "inject=rename,renameat,renameat2:delay_enter=200000", "--",
    )  # fmt: skip
    shared = ("--rejected-dir", str(shared_quarantine))
    with (
        WatchProcess(roots[0], global_args=shared, wrapper=slow_renames) as a,
        WatchProcess(roots[1], global_args=shared, wrapper=slow_renames) as b,
    ):
        sent = []
        for root, who in zip(roots, ("first", "second"), strict=True):
            data = json.dumps({"bad": who}).encode()
            (root / "spool" / "tmp" / ".bad.part").write_bytes(data)
            sent.append(data)
        for root in roots:  # both published within microseconds of each other
            os.rename(root / "spool" / "tmp" / ".bad.part", root / "spool" / "bad.json")

        def both_set_aside() -> bool:
            return all("rejected bad.json" in w.log for w in (a, b)) and not any(
                (root / "spool" / "bad.json").exists() for root in roots
            )

        wait_for(both_set_aside, 30, "both watchers to set their drop aside")
    drops = {
        p.name: p.read_bytes()
        for p in shared_quarantine.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(REASON)
    }
    assert sorted(drops.values()) == sorted(sent), sorted(os.listdir(shared_quarantine))
    assert sorted(drops) == ["bad-1.json", "bad.json"]
    for name in drops:
        assert json.loads((shared_quarantine / f"{name}{REASON}").read_text())["file"] == "bad.json"


@needs_strace_root
def test_a_watcher_killed_amid_the_copy_into_another_filesystem_leaves_no_part_visible(
    root: Path, quarantine: Path
) -> None:
    """SIGKILL amid the copy (its bytes written, not yet fsynced nor named: at the copy's
    one ``fchmod``): a temp file (hidden, never counted) and the reason file alone are
    left in the quarantine, the drop in ``.claimed/``; the next start sweeps the temp
    file, puts the drop back in the spool and sets it aside, whole, once."""
    spool = root / "spool"
    data = os.urandom(2 * MIB)
    drop(spool, "huge.json", data)
    inject = ("-f", "-qq", "-o", "/dev/null", "-e", "inject=fchmod:signal=SIGKILL:when=1")

    code, log = once(root, quarantine, STRACE, *inject)

    assert code != 0, log  # killed amid the copy
    assert [p for p in os.listdir(quarantine) if not p.startswith(".")] == [f"huge.json{REASON}"]
    assert (spool / ".claimed" / "rejecting.huge.json").read_bytes() == data
    assert rejected_counts(root, quarantine) == (0, 0)
    code, log = once(root, quarantine)
    assert code == 0, log
    assert "put back in the spool as huge.json, to be judged again" in log
    assert os.listdir(spool / ".claimed") == []
    assert sorted(os.listdir(quarantine)) == ["huge.json", f"huge.json{REASON}"]
    assert (quarantine / "huge.json").read_bytes() == data
    assert rejected_counts(root, quarantine) == (1, 1)


SENDFILE, RENAMEAT2, UNLINK, UNLINKAT = 40, 316, 87, 263  # x86_64


@needs_strace_root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers are x86_64's")
@pytest.mark.parametrize("where", ["other-fs", "spool"])
def test_a_drop_renamed_onto_the_name_of_one_being_set_aside_is_stored(
    root: Path, quarantine: Path, where: str
) -> None:
    # A writer renames its next snapshot onto the name of an invalid drop while that one
    # is being set aside (its copy, or its move, held up here): the new snapshot is
    # neither removed nor set aside in its place, and the invalid one is kept. Across
    # filesystems it was copied before it was replaced; within one, it had left the
    # spool's name for its claim before its move into the quarantine.
    rejected = quarantine if where == "other-fs" else root / "spool" / "rejected"
    spool = root / "spool"
    bad, good = b'{"broken": ', payload(21)
    args = ("--rejected-dir", str(rejected))
    with WatchProcess(root, global_args=("-v", *args)) as watcher:
        watcher.wait_log("cleanup deleted 0")  # idle: its start-up writes are done
        # Within one filesystem the claim is moved on by a rename that never replaces.
        held = "sendfile" if where == "other-fs" else "renameat2"
        with syscall_delayed(watcher.proc.pid, held, 1_000_000):
            drop(spool, "scrape.json", bad)
            wait_in_syscall(watcher.proc.pid, SENDFILE if where == "other-fs" else RENAMEAT2)
            drop(spool, "scrape.json", good)  # onto the name being set aside
            wait_for(lambda: stored_contents(root) == {good: 1}, 30, "the new snapshot stored")
        assert watcher.stop() == 0
    kept = {p.name: p.read_bytes() for p in rejected.iterdir()}
    assert kept.pop("scrape.json") == bad
    assert json.loads(kept.pop("scrape.json" + REASON))["file"] == "scrape.json"
    assert kept == {}
    assert not (spool / "scrape.json").exists()


RENAME = 82  # x86_64


@needs_strace_root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers are x86_64's")
def test_a_drop_put_back_where_names_cannot_be_taken_safely_never_replaces_a_writers_drop(
    root: Path,
) -> None:
    """A drop on its way to the quarantine when the watcher stopped is put back in the
    spool on start. Where there is no no-replace rename (NFS: strace answers
    ``renameat2`` with ENOSYS) and the claim cannot be linked (``fs.protected_hardlinks``
    on another user's file: EPERM), the drop's own name cannot be taken without a look
    then a rename, and a writer renaming its next snapshot onto that name in between
    (the rename held up here) would lose it. The snapshot is stored; the drop put back
    under a fresh name of its own is set aside once."""
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    quarantine = spool / "rejected"
    bad, good = b"{not json", payload(41)
    claim = spool / ".claimed" / "rejecting.scrape.json"
    claim.parent.mkdir(exist_ok=True)
    claim.write_bytes(bad)
    held = (
        STRACE, "-f", "-qq", "-o", "/dev/null", "-P", str(claim), "-P", str(spool / "scrape.json"),
        "-e", "inject=renameat2:error=ENOSYS",
        "-e", "inject=link,linkat:error=EPERM",
        "-e", "inject=rename:delay_enter=2000000", "--",
    )  # fmt: skip
    # Not waited for as it starts: the drop is put back before it watches.
    with contextlib.ExitStack() as stack:
        watcher = stack.push(WatchProcess(root, wrapper=held))
        tracer = watcher.proc.pid
        program = traced_program(tracer)

        def putting_back() -> bool:
            # Inside the rename onto the drop's name (in whichever thread recovers), or
            # put back elsewhere already.
            try:
                threads = os.listdir(f"/proc/{program}/task")
            except FileNotFoundError:
                now = Path(f"/proc/{tracer}/task/{tracer}/children").read_text()
                raise AssertionError(
                    f"program {program} gone; strace's children now {now!r}; "
                    f"strace alive {watcher.proc.poll() is None}; log {watcher.log!r}"
                ) from None
            inside = any(in_syscall(int(thread), RENAME) for thread in threads)
            return inside or not os.listdir(spool / ".claimed")

        wait_for(putting_back, 20, "the claim being put back in the spool")
        drop(spool, "scrape.json", good)  # the writer's: onto the name being taken
        wait_for(lambda: stored_contents(root) == {good: 1}, 30, "the new snapshot stored")
        wait_for(lambda: len(os.listdir(quarantine)) == 2, 30, "the old drop set aside")
        assert watcher.stop() == 0, watcher.log
    kept = [p.read_bytes() for p in quarantine.iterdir() if not p.name.endswith(REASON)]
    assert kept == [bad], watcher.log
    assert not (spool / "scrape.json").exists()
    assert os.listdir(spool / ".claimed") == []


@needs_strace_root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers are x86_64's")
def test_a_reason_file_another_watcher_writes_as_ours_is_named_where_links_are_refused_is_kept(
    root: Path,
) -> None:
    """Two watchers may share one quarantine. Where it refuses hard links (vfat, some
    FUSE or SMB mounts: strace answers ``linkat`` with EPERM), a reason file must still
    take its name by a step that never replaces: a look then a rename would replace the
    reason file another watcher wrote under that name in between (written here while
    every rename is held up), and its drop would be left without its reason. Ours takes
    the next name; theirs is kept as it was."""
    assert run_cli(root, "init").returncode == 0
    spool, quarantine = root / "spool", root / "spool" / "rejected"
    quarantine.mkdir(exist_ok=True)
    theirs = quarantine / f"scrape.json{REASON}"
    record = json.dumps({"file": "scrape.json", "reason": "the other watcher's"}).encode()
    (spool / "scrape.json").write_bytes(b"{not json")
    held = (
        STRACE, "-f", "-qq", "-o", "/dev/null",
        "-e", "inject=link,linkat:error=EPERM",
        "-e", "inject=rename,renameat2:delay_enter=2000000", "--",
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        watcher = stack.push(WatchProcess(root, "--once", wrapper=held))
        tracer = watcher.proc.pid
        program = traced_program(tracer)

        def naming_ours() -> bool:
            # A temp reason file in the quarantine, and a rename held up.
            assert watcher.proc.poll() is None, watcher.log
            temps = [n for n in os.listdir(quarantine) if n.startswith(".")]
            threads = os.listdir(f"/proc/{program}/task")
            renaming = any(
                in_syscall(int(t), RENAME) or in_syscall(int(t), RENAMEAT2) for t in threads
            )
            return bool(temps) and renaming

        wait_for(naming_ours, 30, "our reason file being named")
        fd = os.open(theirs, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # their move is under way
            os.write(fd, record)
            assert watcher.proc.wait(timeout=60) == 0, watcher.log
        finally:
            os.close(fd)
    assert theirs.read_bytes() == record, watcher.log
    assert (quarantine / "scrape-1.json").read_bytes() == b"{not json", watcher.log
    said = json.loads((quarantine / f"scrape-1.json{REASON}").read_text())
    assert said["file"] == "scrape.json"


def freed_number_given_again(staging: Path) -> bool:
    """Whether the filesystem of ``staging`` gives the number of a freed inode to the
    next file made there at once (ext4 does), in the steps a writer takes: a file
    replaced by a rename (freed), then a new one written."""
    old, new, after = staging / ".reuse-old", staging / ".reuse-new", staging / ".reuse-after"
    old.write_bytes(b"old")
    number = os.stat(old).st_ino
    new.write_bytes(b"new")
    os.rename(new, old)
    after.write_bytes(b"after")
    reused = os.stat(after).st_ino == number
    old.unlink()
    after.unlink()
    return reused


@needs_strace_root
def test_a_drop_that_gets_the_number_of_the_one_copied_into_the_quarantine_is_stored(
    root: Path, quarantine: Path
) -> None:
    """Held after an invalid drop A was copied into the quarantine, before its claim is
    removed: a writer renames B onto the spool name A had, then C. Were A's name in the
    spool still the one removed, and A no longer open, its inode would be freed, and C,
    made next, would get its number (ext4 gives it out again at once): C would look
    like A at the removal's check, and be removed unseen. A left the spool by its claim
    before its copy, and only the claim is removed: C stays, and is stored."""
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    path = spool / "scrape.json"
    bad = b'{"broken": '
    quarantine.mkdir()
    folder = os.path.realpath(quarantine)

    # Where the quarantine folder's fsync before the removal falls: the last of its
    # fsyncs before the unlink of the drop's claim, in a run that sets it aside.
    claim = spool / ".claimed" / "rejecting.scrape.json"
    drop(spool, "scrape.json", bad)
    trace = root.parent / "dry.trace"
    dry = (STRACE, "-f", "-qq", "-y", "-o", str(trace), "-P", str(quarantine), "-P", str(claim))
    code, log = once(root, quarantine, *dry)
    assert code == 0, log
    calls = trace.read_text().splitlines()
    removal = next(
        n
        for n, line in enumerate(calls)
        if re.search(rf"unlink(at)?\(.*\"{re.escape(str(claim))}\"", line)
    )
    held_at = re.compile(rf"\bfsync\(\d+<{re.escape(folder)}>")
    fsyncs = sum(1 for line in calls[:removal] if held_at.search(line))
    assert fsyncs >= 1, calls
    for entry in quarantine.iterdir():
        entry.unlink()

    if not freed_number_given_again(spool / "tmp"):
        pytest.skip("this filesystem does not give a freed inode number out again at once")
    a = drop(spool, "scrape.json", bad)
    a_number = os.stat(a).st_ino
    c_number: list[int] = []

    def writer() -> None:
        assert (quarantine / "scrape.json").read_bytes() == bad  # copied and named
        assert os.lstat(claim).st_ino == a_number  # and not removed yet
        drop(spool, "scrape.json", payload(30))  # B: A's last name goes
        drop(spool, "scrape.json", payload(31))  # C
        c_number.append(os.lstat(path).st_ino)

    args = ("--rejected-dir", str(quarantine), "watch", "--once")
    held = run_held_after(root, args, quarantine, "fsync", writer, when=fsyncs)
    assert "Traceback" not in held.stderr, held.stderr
    code, log = once(root, quarantine)
    assert code == 0, log

    reused = "got" if c_number == [a_number] else "did not get"
    assert stored_contents(root) == {payload(31): 1}, f"C {reused} A's number\n{held.stderr}{log}"
    assert not path.exists()
    assert sorted(os.listdir(quarantine)) == ["scrape.json", f"scrape.json{REASON}"]
    assert (quarantine / "scrape.json").read_bytes() == bad


def listening_until(
    listener: NotifyListener, condition: Callable[[], object], what: str, timeout: float = 20.0
) -> None:
    """Wait until ``condition()`` holds, reading the notify socket meanwhile (its queue
    is short: a full one would hold the watcher's next message back)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        listener.receive(0.01)


PIECE = 16 * MIB  # a copy across filesystems goes one sendfile, one fdatasync, at a time


def big_drop(root: Path, pieces: int) -> tuple[Path, Path]:
    """An over-limit drop of ``pieces`` pieces of data, no holes, staged in the spool's
    ``tmp/`` (``.big.json.part``), for the test to rename in when it wants; and the same
    inode by a name the watcher never looks at (``ROOT/big.orig``), to compare with."""
    block = os.urandom(MIB + 7)  # never a whole number of pieces: a misplaced one shows
    data = (block * (pieces * PIECE // len(block) + 1))[: pieces * PIECE]
    staged = root / "spool" / "tmp" / ".big.json.part"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(data)
    kept = root / "big.orig"
    os.link(staged, kept)
    return staged, kept


def sendfile_held(seconds: float) -> tuple[str, ...]:
    """strace's arguments that hold up every ``sendfile`` (one a piece) ``seconds``."""
    held = ("-f", "-qq", "-o", os.devnull, "-e", "trace=sendfile")
    return (*held, "-e", f"inject=sendfile:delay_enter={int(seconds * 1e6)}")


def copy_under_way(quarantine: Path) -> bool:
    """Whether a copy's temp file is in ``quarantine`` (it is named only once whole)."""
    return quarantine.is_dir() and any(n.startswith(".tmp-") for n in os.listdir(quarantine))


@contextlib.contextmanager
def pinged_watcher(
    root: Path, quarantine: Path, wrapper: tuple[str, ...] = ()
) -> Iterator[tuple[NotifyListener, WatchProcess]]:
    """A watcher setting drops aside into ``quarantine``, its notifications to systemd
    (a 0.4 s watchdog) heard by a listener; yields both."""
    with (
        NotifyListener() as listener,
        WatchProcess(
            root,
            global_args=("--rejected-dir", str(quarantine)),
            env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"},
            wrapper=wrapper,
        ) as watcher,
    ):
        yield listener, watcher


@needs_strace_root
def test_a_long_copy_into_another_filesystem_keeps_the_watchdog_fed_and_the_watcher_going(
    root: Path, tmp_path: Path, can_mount: None
) -> None:
    """An over-limit drop of 192 MiB of data, no holes, set aside across filesystems with
    every ``sendfile`` held up 0.25 s (a slow disk): the watchdog hears from the copy
    itself, piece by piece, while it is under way (the loop alone would be silent until
    it ends), and the watcher stores the next drop after it. The copy is whole."""
    spool = root / "spool"
    staged, kept = big_drop(root, 12)
    with tmpfs(tmp_path / "other-fs", size="256m") as fs:
        quarantine = fs / "rejected"
        with pinged_watcher(root, quarantine) as (listener, watcher):
            alive = lambda: watcher.proc.poll() is None  # noqa: E731
            listener.wait_for(lambda m: "READY" in m.fields, 30, "READY=1", alive)

            def copying() -> bool:
                # The reason file is named before the copy begins.
                reason = f"big.json{REASON}" in os.listdir(quarantine)
                return reason and copy_under_way(quarantine)

            with syscall_delayed(watcher.proc.pid, "sendfile", 250_000):
                os.rename(staged, spool / "big.json")
                listening_until(listener, copying, "the copy under way")
                # What was sent before the copy began is not heard as sent during it.
                while listener.receive(0.001) is not None:
                    pass
                for n in range(1, 4):
                    listener.wait_for(lambda m: "WATCHDOG" in m.fields, 10, f"ping {n}", alive)
                    assert copying(), f"ping {n} came after the copy, not during it"
            gone = lambda: "rejected big.json" in watcher.log  # noqa: E731
            listening_until(listener, gone, "big.json set aside")
            drop(spool, "next.json", payload(7))
            stored = lambda: stored_contents(root) == {payload(7): 1}  # noqa: E731
            listening_until(listener, stored, "next.json stored")
            assert watcher.stop() == 0, watcher.log
        log = watcher.log
        said = f"INFO setting aside big.json (192.0 MiB) across filesystems, into {quarantine}"
        assert said in log, log
        assert "rejected big.json: drop is 201326592 bytes, over the limit" in log, log
        assert "Traceback" not in log and "cannot notify" not in log, log
        assert sorted(os.listdir(quarantine)) == ["big.json", f"big.json{REASON}"]
        assert filecmp.cmp(kept, quarantine / "big.json", shallow=False)
        # Once running, there is no start-up timeout left to extend.
        assert not any("EXTEND_TIMEOUT_USEC" in m.fields for m in listener.messages)


@needs_strace_root
def test_a_long_copy_before_ready_extends_the_start_up_timeout_piece_by_piece(
    root: Path, tmp_path: Path, can_mount: None
) -> None:
    """An over-limit drop of 5 pieces of data waits in the spool at the start, the
    quarantine on another filesystem, every ``sendfile`` (one a piece) held up 0.3 s: it
    is set aside in the backlog taken before ``READY=1``, while systemd's watchdog is not
    armed yet and its start-up timeout runs, which ``WATCHDOG=1`` does not extend. The
    copy's pieces send ``EXTEND_TIMEOUT_USEC=`` (three ping intervals) while its temp
    file is there, and ``READY=1`` comes once it is set aside whole; none after it."""
    spool = root / "spool"
    staged, kept = big_drop(root, 5)
    os.rename(staged, spool / "big.json")
    os.utime(spool / "big.json", (time.time() - 60,) * 2)  # long settled
    with tmpfs(tmp_path / "other-fs", size="128m") as fs:
        quarantine = fs / "rejected"

        def copying() -> bool:
            return copy_under_way(quarantine)

        with pinged_watcher(root, quarantine, (STRACE, *sendfile_held(0.3))) as (listener, watcher):
            program = traced_program(watcher.proc.pid)
            try:
                extended_while_copying = 0
                deadline = time.monotonic() + 20
                while True:
                    message = listener.receive(0.01)
                    assert time.monotonic() < deadline, f"no READY=1: {listener.messages}"
                    assert watcher.proc.poll() is None, watcher.log
                    if message is None:
                        continue
                    extension = message.fields.get("EXTEND_TIMEOUT_USEC")
                    if extension is not None:
                        assert extension == "600000", message  # 3 x 0.2 s
                        extended_while_copying += copying()
                    if "READY" in message.fields:
                        assert not copying(), "READY=1 while the copy was under way"
                        break
                assert sorted(os.listdir(quarantine)) == ["big.json", f"big.json{REASON}"]
                assert extended_while_copying >= 2, listener.messages
                ready_at = len(listener.messages)
                os.kill(program, signal.SIGTERM)
                code = watcher.proc.wait(timeout=10)
                while listener.receive(0.01) is not None:
                    pass
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(program, signal.SIGKILL)
        log = watcher.log
        assert code == 0, log
        after = listener.messages[ready_at:]
        assert not any("EXTEND_TIMEOUT_USEC" in m.fields for m in after), after
        assert "rejected big.json: drop is 83886080 bytes, over the limit" in log, log
        assert "Traceback" not in log and "cannot notify" not in log, log
        assert filecmp.cmp(kept, quarantine / "big.json", shallow=False)


@needs_strace_root
@pytest.mark.parametrize("run", ["service", "once"])
def test_a_stop_amid_a_long_copy_into_another_filesystem_leaves_the_drop_in_the_spool(
    root: Path, tmp_path: Path, can_mount: None, run: str
) -> None:
    """SIGTERM while an over-limit drop of 12 pieces of data is being copied across
    filesystems, every ``sendfile`` (one a piece) held up 1 s: the copy is given up at
    its next piece, and the watcher stops as it always does, not minutes later: a
    service exits 0 with its stop line; ``--once`` as when a stop leaves drops in the
    spool (exit 1, saying so: a drop not set aside, not one not stored). Nothing of the
    drop is left in the quarantine (no temp file, no reason file), the drop waits in the
    spool untouched, and the valid drop claimed before it in the same group is stored.
    The next start sets it aside, whole."""
    spool = root / "spool"
    pieces, delay = 12, 1.0
    staged, kept = big_drop(root, pieces)
    with kept.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").digest()
    # Both wait when the watcher starts, the valid one older: one group, taken in that
    # order, and both long settled.
    good = drop(spool, "good.json", payload(3))
    os.utime(good, (time.time() - 120,) * 2)
    os.rename(staged, spool / "big.json")
    os.utime(spool / "big.json", (time.time() - 60,) * 2)
    with tmpfs(tmp_path / "other-fs", size="256m") as fs:
        quarantine = fs / "rejected"
        with WatchProcess(
            root,
            *(("--once",) if run == "once" else ()),
            global_args=("--rejected-dir", str(quarantine)),
            wrapper=(STRACE, *sendfile_held(delay)),
        ) as watcher:
            program = traced_program(watcher.proc.pid)
            try:
                wait_for(lambda: copy_under_way(quarantine), 20, "the copy under way")
                os.kill(program, signal.SIGTERM)
                # The old way finished the copy first: at least 11 more held-up pieces,
                # 11 s. Given up at the next piece, the stop takes one piece (1 s) and
                # the usual stop (well under a second): 8 s leaves room for a busy
                # machine, and still fails a stop that waits for the whole copy.
                try:
                    code = watcher.proc.wait(timeout=(pieces - 1) * delay - 3)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"the stop waited for the copy:\n{watcher.log}") from None
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(program, signal.SIGKILL)
        log = watcher.log
        assert "Traceback" not in log, log
        errors = [line for line in log.splitlines() if " ERROR " in line]
        if run == "once":
            # Said for what it is: a drop to be set aside, not one to be stored.
            left = (
                "ERROR 1 drop(s) could not be set aside before the stop: left in the spool "
                "for the next start"
            )
            assert (code, len(errors)) == (1, 1) and left in errors[0], log
        else:
            assert (code, errors) == (0, []), log
        said = f"INFO stopping: the copy of big.json into {quarantine} abandoned ("
        assert log.count(said) == 1, log
        assert "; set aside at the next start" in log, log
        assert "stopped: 1 ingested, 0 rejected, 1 waiting" in log, log
        assert os.listdir(quarantine) == [], "nothing of it in the quarantine"
        big = spool / "big.json"
        assert os.path.samestat(os.lstat(big), os.lstat(kept)), "the drop itself, untouched"
        with big.open("rb") as handle:
            assert hashlib.file_digest(handle, "sha256").digest() == digest
        assert stored_contents(root) == {payload(3): 1}

        code, log = once(root, quarantine)

        assert code == 0, log
        assert "abandoned" not in log, log
        assert sorted(os.listdir(quarantine)) == ["big.json", f"big.json{REASON}"]
        assert filecmp.cmp(kept, quarantine / "big.json", shallow=False)
        assert not big.exists()
        assert rejected_counts(root, quarantine) == (1, 1)


@needs_strace_root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers are x86_64's")
def test_a_copy_into_another_filesystem_that_makes_no_progress_lets_the_watchdog_fire(
    root: Path, quarantine: Path
) -> None:
    """A copy of one piece whose ``sendfile`` hangs 1.2 s (a hung disk, three times the
    watchdog's timeout): not one ping while it hangs, so systemd would kill the watcher.
    Liveness follows progress; it is never faked by a timer."""
    with pinged_watcher(root, quarantine) as (listener, watcher):
        pid = watcher.proc.pid
        alive = lambda: watcher.proc.poll() is None  # noqa: E731
        listener.wait_for(lambda m: "READY" in m.fields, 30, "READY=1", alive)
        with syscall_delayed(pid, "sendfile", 1_200_000):
            drop(root / "spool", "stuck.json", os.urandom(2 * MIB))  # one piece, one call
            listening_until(listener, lambda: in_syscall(pid, SENDFILE), "the copy hung")
            while listener.receive(0.001) is not None:
                pass  # sent before it hung
            while in_syscall(pid, SENDFILE):
                message = listener.receive(0.01)
                if message is not None and "WATCHDOG" in message.fields:
                    assert not in_syscall(pid, SENDFILE), "a ping while the copy hung"
        listening_until(listener, lambda: (quarantine / "stuck.json").exists(), "stuck.json")
        assert watcher.stop() == 0, watcher.log
    assert "Traceback" not in watcher.log, watcher.log
