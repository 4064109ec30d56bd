"""The trigger's failures as the dashboard card shows them: one line in ``message``.

The original server answers its POST endpoints ``{success, message, timestamp}``; the
card shows ``message``. A failed run says what happened (exit status, signal, timeout,
cannot start) and, where the command wrote one, its last non-empty line on stderr: the
error itself, bounded, with nothing in it that a card or a log line would render as
more than text, and never a traceback's many lines.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from support.serveproc import KEY, ServeProcess

from ingester.serve.trigger_command import LAST_LINE_CHARS

TRIGGER = "/api/claude/console-usage/trigger"


def py_command(code: str) -> str:
    """A --trigger-command running ``code`` with this interpreter."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def press(root: Path, command: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """One press of the card's refresh button: (status, answer, the server's log)."""
    with ServeProcess(root, "--trigger-command", command, *args) as server:
        r = server.post(TRIGGER, headers={"X-API-Key": KEY}, timeout=60)
        log = server.log
    assert "\nTraceback" not in log, log  # the server's own; the command's are quoted
    return r.status_code, r.json(), log


def one_line(message: str) -> None:
    assert message.isprintable(), repr(message)


def test_a_traceback_gives_its_last_line_not_the_stdout_flushed_after_it(root: Path) -> None:
    # print() to a pipe is buffered: Python writes it out as it exits, after the
    # traceback went to stderr. The card gets the error, not "scraped 2 of 3".
    status, body, log = press(
        root,
        py_command(
            "print('scraped 2 of 3')\n"
            "def login():\n    raise ValueError('the console login expired')\n"
            "login()"
        ),
    )
    assert status == 500 and body["success"] is False
    assert set(body) == {"success", "message", "timestamp", "requestId", "joined"}
    message = body["message"]
    assert message == (
        "the trigger command failed with exit status 1; its last line on stderr: "
        "ValueError: the console login expired"
    )
    one_line(message)
    assert f"{body['requestId']}: {message}" in log  # the log line says the same
    assert "| Traceback (most recent call last):" in log  # the whole of it is logged
    assert "| scraped 2 of 3" in log


def test_the_last_line_is_bounded_and_its_control_characters_made_safe(root: Path) -> None:
    code = (
        "import sys\n"
        "sys.stderr.write('first\\n\\x1b[31merror:\\x1b[0m bad\\x07 \\x1b]0;title\\x07'"
        " + 'word ' * 200 + '\\n\\n  \\n')\n"
        "sys.exit(2)"
    )
    status, body, _ = press(root, py_command(code))
    assert status == 500
    message = body["message"]
    prefix = "the trigger command failed with exit status 2; its last line on stderr: "
    assert message.startswith(prefix + "error: bad\\x07 word word "), message
    line = message.removeprefix(prefix)
    assert len(line) == LAST_LINE_CHARS and line.endswith("..."), line
    one_line(message)


def test_the_last_line_comes_after_output_the_log_cut(root: Path) -> None:
    code = (
        "import sys\n"
        "sys.stderr.write(('x' * 99 + '\\n') * 1000)\n"
        "sys.stderr.write('scraper: no session cookie')\n"  # no line end
        "sys.exit(3)"
    )
    status, body, log = press(root, py_command(code))
    assert status == 500
    assert body["message"].endswith("; its last line on stderr: scraper: no session cookie")
    assert "output cut after 16384 bytes" in log


def test_a_command_that_cannot_start_says_why(root: Path, tmp_path: Path) -> None:
    # serve refuses to start with a command it cannot run; one that goes away, or loses
    # its mode, afterwards (a scraper's upgrade under way) is said at the press.
    script = tmp_path / "scrape.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    headers = {"X-API-Key": KEY}
    with ServeProcess(root, "--trigger-command", f"{script} --fresh") as server:
        script.chmod(0o644)
        denied = server.post(TRIGGER, headers=headers, timeout=60)
        script.unlink()
        gone = server.post(TRIGGER, headers=headers, timeout=60)
        log = server.log
    assert (denied.status_code, gone.status_code) == (500, 500)
    assert denied.json()["message"] == f"cannot run {script}: Permission denied"
    assert gone.json()["message"] == f"cannot run {script}: No such file or directory"
    assert f"ERROR {gone.json()['requestId']}: cannot run {script}" in log
    assert "\nTraceback" not in log, log


def test_a_command_killed_by_a_signal_says_which_and_its_last_words(root: Path) -> None:
    code = (
        "import os, signal, sys\n"
        "print('scraper: page did not load', file=sys.stderr, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    status, body, _ = press(root, py_command(code))
    assert status == 500
    assert body["message"] == (
        "the trigger command was killed by SIGKILL; its last line on stderr: "
        "scraper: page did not load"
    )


def test_a_command_past_its_timeout_says_so_and_its_last_words(root: Path) -> None:
    code = (
        "import sys, time\n"
        "print('waiting for the console to answer', file=sys.stderr, flush=True)\n"
        "time.sleep(60)"
    )
    status, body, _ = press(root, py_command(code), "--trigger-timeout", "1")
    assert status == 500
    assert body["message"] == (
        "the trigger command timed out after 1 s and was stopped; its last line on stderr: "
        "waiting for the console to answer"
    )


def test_a_command_that_succeeds_is_not_given_its_stderr(root: Path) -> None:
    status, body, _ = press(root, py_command("import sys; print('warning: slow', file=sys.stderr)"))
    assert status == 200 and body["success"] is True
    assert body["message"].startswith("the trigger command finished in ")
    assert "warning" not in body["message"]
