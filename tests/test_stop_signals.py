"""Stop signals at unlucky instants: many at once, or one before the server's loop runs.

A long-running command must stop, exit 0 and say so, whatever the timing of the signals
that stop it: a closed terminal may send SIGHUP twice, an impatient operator presses
Ctrl-C repeatedly, and systemd sends SIGTERM the moment a start is cancelled.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from support import cli_env, run_cli, run_command, wait_for
from support.capabilities import STRACE, needs_strace_root, traced_program
from support.process import kill_group
from support.serveproc import ServeProcess
from support.signals import STOPS, pause, storm, survives_a_storm
from support.watchproc import WatchProcess, drop, payload, stored_contents

_FLAG_UNDER_FIRE = """
import signal
from ingester.runtime.signals import StopFlag

stop = StopFlag()
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda signum, frame: stop.set())
print("ready", flush=True)
for _ in range(3000):
    stop.wait(0.0005)
    stop.is_set()
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
print("done", flush=True)
"""


def test_the_stop_flag_takes_signals_inside_its_own_calls() -> None:
    """Handlers set the flag while the main thread is in the flag's own calls, and in
    the handler before: a flag taking a lock there (``threading.Event``) waits on
    itself for ever, or dies of the recursion, within a second of such a storm."""
    survives_a_storm(_FLAG_UNDER_FIRE, STOPS, 3000, 3, "the flag's process")


@pytest.mark.parametrize("seed", range(3))
def test_watch_stops_once_and_cleanly_under_a_storm_of_stop_signals(root: Path, seed: int) -> None:
    spool = root / "spool"
    with WatchProcess(root) as w:
        for i in range(20):
            drop(spool, f"d{i}.json", payload(i))
        storm(w.proc.pid, 60, seed)
        code = w.stop(timeout=20)
    assert code == 0, w.log
    assert len(re.findall(r"INFO stopped: ", w.log)) == 1, w.log
    assert "Traceback" not in w.log
    # Nothing lost, nothing twice: what it left, the next run stores.
    with WatchProcess(root) as again:
        wait_for(lambda: sum(stored_contents(root).values()) == 20, 20, "all 20 stored")
        assert again.stop() == 0
    assert set(stored_contents(root).values()) == {1}


@pytest.mark.parametrize("watch", [False, True], ids=["serve", "serve --watch"])
def test_serve_stops_on_a_repeated_sigint_without_a_traceback(root: Path, watch: bool) -> None:
    """uvicorn forces its exit on a second SIGINT, which skips the app's lifespan
    shutdown, and then logs the lifespan's cancellation with a traceback."""
    server = ServeProcess(root, *(["--watch"] if watch else [])).start()
    server.wait_log("serve --watch: ready" if watch else "no watcher holds the history")
    server.proc.send_signal(signal.SIGINT)
    pause(0.005)  # two signals, not one: the first has been taken by then
    server.proc.send_signal(signal.SIGINT)
    code = server.stop(timeout=30)
    assert code == 0, server.log
    assert "Traceback" not in server.log
    assert " ERROR " not in server.log, server.log
    assert len(re.findall(r"INFO serve: stopped: ", server.log)) == 1, server.log


@needs_strace_root
@pytest.mark.parametrize(
    ("watch", "stop"),
    [(False, signal.SIGTERM), (True, signal.SIGINT)],
    ids=["serve-SIGTERM", "serve --watch-SIGINT"],
)
def test_a_stop_signal_before_the_server_loop_runs_still_stops_it(
    root: Path, watch: bool, stop: signal.Signals
) -> None:
    """uvicorn puts its handlers in place once its loop runs. A SIGTERM that came
    between our start and that was lost: the server went on as if never told. The loop's
    start is held here (each ``epoll_create1`` delayed 0.8 s) so the signal lands in
    that gap every time."""
    log = root.parent / "serve-early.log"
    argv = ["serve", "--listen", "127.0.0.1:0", *(["--watch"] if watch else [])]
    with log.open("wb") as sink:
        tracer = subprocess.Popen(
            [
                *(STRACE, "-f", "-qq", "-o", "/dev/null"),
                *("-e", "inject=epoll_create1:delay_enter=800000"),
                *(sys.executable, "-m", "ingester", "--root", str(root), *argv),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=cli_env(PYTHONFAULTHANDLER="1"),
            start_new_session=True,  # strace and serve, ended together (kill_group)
        )
    try:
        wait_for(lambda: "serve: listening on" in log.read_text(), 30, "the listening line")
        program = traced_program(tracer.pid)
        os.kill(program, stop)
        try:
            code = tracer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(program, signal.SIGABRT)  # faulthandler: the stacks, in the log
            tracer.wait(timeout=10)
            pytest.fail(f"serve went on after {stop.name}:\n{log.read_text()}")
    finally:
        kill_group(tracer)
    text = log.read_text()
    assert code == 0, text
    assert "INFO serve: stopped: " in text
    assert "serve --watch: ready" not in text, text  # stopped before it was ready


def _loaded_file(module: str) -> str:
    """The file Python opens first to load ``module``: its cached bytecode's (opened
    whether or not it exists yet)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return importlib.util.cache_from_source(spec.origin)


def _ingester(how: str) -> list[str]:
    """``python -m ingester``, or the installed ``ingester`` command (skip if none)."""
    if how == "-m":
        return [sys.executable, "-m", "ingester"]
    script = Path(sys.executable).parent / "ingester"
    if not script.exists():
        pytest.skip(f"the ingester command is not installed beside {sys.executable}")
    return [str(script)]


def _under_strace(
    command: list[str], root: Path, args: Sequence[str], *options: str
) -> subprocess.CompletedProcess[str]:
    """``COMMAND --root ROOT ARGS`` under ``strace -f -qq OPTIONS`` (a trace to a log, or
    a SIGINT injected), its output captured."""
    return run_command([STRACE, "-f", "-qq", *options, *command, "--root", str(root), *args])


def _interrupted(root: Path, command: list[str], *inject: str) -> subprocess.CompletedProcess[str]:
    """``command --root ROOT watch --once`` under strace with ``inject`` (its filter and
    its SIGINT injection)."""
    return _under_strace(command, root, ("watch", "--once"), "-o", os.devnull, *inject)


@needs_strace_root
@pytest.mark.parametrize(
    ("how", "module"),
    [
        ("-m", "click.core"),  # the command line's own library
        ("-m", "ingester.settings"),  # ours, loaded with the command line
        ("script", "click.core"),  # the installed ``ingester`` command
    ],
)
def test_a_ctrl_c_while_the_command_line_loads_ends_the_run_in_one_line(
    root: Path, how: str, module: str
) -> None:
    """Ctrl-C in the first tenth of a second, while the command line loads: Python's own
    handler printed a traceback from the middle of an import there. The signal is
    delivered the instant the module named is opened (strace), then the run ends as
    click ends an interrupted command, and nothing was done."""
    path = _loaded_file(module)
    inject = ("-P", path, "-e", "trace=openat", "-e", "inject=openat:signal=SIGINT:when=1")
    done = _interrupted(root, _ingester(how), *inject)
    assert (done.returncode, done.stderr) == (1, "\nAborted!\n"), done.stderr[-3000:]
    assert not root.exists() or not any(root.iterdir())


@needs_strace_root
@pytest.mark.parametrize(
    ("args", "module", "stop", "said"),
    [
        (("serve", "--watch"), "click.core", signal.SIGTERM, "serve --watch: stopped"),
        (("serve", "--watch"), "ingester.serve.server", signal.SIGTERM, "serve --watch: stopped"),
        (("serve", "--watch"), "ingester.serve.server", signal.SIGHUP, "serve --watch: stopped"),
        (("serve",), "ingester.serve.server", signal.SIGTERM, "INFO serve: stopped: "),
        (("watch",), "click.core", signal.SIGTERM, "stopped: 0 ingested"),
        (("watch",), "ingester.intake.watcher", signal.SIGTERM, "stopped: 0 ingested"),
    ],
    ids=[
        "serve --watch-loading",
        "serve --watch-starting",
        "serve --watch-starting-SIGHUP",
        "serve-starting",
        "watch-loading",
        "watch-starting",
    ],
)
def test_a_stop_signal_while_a_service_loads_is_its_clean_stop(
    root: Path, args: tuple[str, ...], module: str, stop: signal.Signals, said: str
) -> None:
    """``systemctl stop`` just after ``start``: the signal comes while the command loads
    (delivered the instant the module named is opened, by strace), before the service's
    own handlers are in. It is the documented clean stop all the same (its stop line,
    exit 0), not an end by the signal (143, a failure in systemd's eyes)."""
    assert run_cli(root, "init").returncode == 0
    listen = ("--listen", "127.0.0.1:0") if args[0] == "serve" else ()
    inject = ("-P", _loaded_file(module), "-e", "trace=openat")
    inject += ("-e", f"inject=openat:signal={stop.name}:when=1")
    done = _under_strace(_ingester("-m"), root, (*args, *listen), "-o", os.devnull, *inject)
    assert done.returncode == 0, done.stderr[-3000:]
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


@needs_strace_root
@pytest.mark.parametrize(
    ("once", "code", "said"),
    [
        ((), 0, "INFO mirror stopped; 0 version(s) waiting"),
        (("--once",), 1, "ERROR stopped before its pass; no version was mirrored or compared"),
    ],
    ids=["service", "once"],
)
def test_a_stop_while_the_mirror_starts_is_its_stop_and_never_a_whole_copy(
    root: Path, once: tuple[str, ...], code: int, said: str
) -> None:
    """A SIGTERM while ``mirror`` loads (delivered the instant its module is opened, by
    strace) is the service's clean stop, exit 0; but ``mirror --once``, whose exit 0
    says every version is in the object store, has mirrored nothing: exit 1, said."""
    assert run_cli(root, "init").returncode == 0
    args = ("mirror", "s3://bucket/usage", "--endpoint-url", "http://127.0.0.1:9", *once)
    inject = ("-P", _loaded_file("ingester.mirror.mirror"), "-e", "trace=openat")
    inject += ("-e", "inject=openat:signal=SIGTERM:when=1")
    done = _under_strace(_ingester("-m"), root, args, "-o", os.devnull, *inject)
    assert done.returncode == code, done.stderr[-3000:]
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


@needs_strace_root
@pytest.mark.parametrize(
    ("args", "module", "said"),
    [
        (("serve", "--watch"), "ingester.serve.server", "serve --watch: stopped"),
        (("serve",), "ingester.serve.server", "INFO serve: stopped: "),
        (("watch",), "ingester.intake.watcher", "stopped: 0 ingested"),
    ],
    ids=["serve --watch", "serve", "watch"],
)
def test_a_ctrl_c_once_a_service_is_named_is_its_clean_stop(
    root: Path, args: tuple[str, ...], module: str, said: str
) -> None:
    """Ctrl-C in the moment after the command line has loaded and named the service,
    while the service itself loads and starts (delivered the instant the module named is
    opened, by strace), before its own handlers are in: the clean stop that --help and
    the docs promise for SIGINT (its stop line, exit 0), not ``Aborted!`` and exit 1."""
    assert run_cli(root, "init").returncode == 0
    listen = ("--listen", "127.0.0.1:0") if args[0] == "serve" else ()
    inject = ("-P", _loaded_file(module), "-e", "trace=openat")
    inject += ("-e", "inject=openat:signal=SIGINT:when=1")
    done = _under_strace(_ingester("-m"), root, (*args, *listen), "-o", os.devnull, *inject)
    assert done.returncode == 0, done.stderr[-3000:]
    assert said in done.stderr, done.stderr[-3000:]
    assert "Aborted!" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


@needs_strace_root
def test_a_ctrl_c_once_a_one_shot_command_is_named_still_ends_it_at_once(root: Path) -> None:
    """A command that does not stop cleanly on Ctrl-C (verify here) ends as click ends
    an interrupted command, as before: the hold is the services' alone."""
    assert run_cli(root, "init").returncode == 0
    inject = ("-P", _loaded_file("ingester.ops.verify"), "-e", "trace=openat")
    inject += ("-e", "inject=openat:signal=SIGINT:when=1")
    done = _under_strace(_ingester("-m"), root, ("verify",), "-o", os.devnull, *inject)
    assert (done.returncode, done.stderr) == (1, "\nAborted!\n"), done.stderr[-3000:]


def test_the_commands_tests_start_begin_with_the_stop_signals_defaults() -> None:
    """However the suite was started (a background job of a shell without job control
    ignores SIGINT, ``nohup`` SIGHUP), a command a test starts meets each stop signal as
    at a terminal: the tests of a Ctrl-C or a hangup prove nothing otherwise."""
    probe = (
        "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
        "signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGHUP) == signal.SIG_DFL)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    assert done.stdout == "True True\n", done.stderr


_SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


@needs_strace_root
def test_a_ctrl_c_its_parent_ignores_is_ignored_while_the_command_line_loads(
    root: Path,
) -> None:
    """A command started with SIGINT ignored (a background job of a shell without job
    control) keeps it ignored: the same Ctrl-C as above changes nothing, and the run
    does its work."""
    (root / "spool").mkdir()
    (root / "spool" / "a.json").write_bytes(payload(1))
    inject = ("-P", _loaded_file("click.core"), "-e", "trace=openat")
    inject += ("-e", "inject=openat:signal=SIGINT:when=1")
    ignoring = [sys.executable, "-c", _SIGINT_IGNORED, *_ingester("-m")]
    done = _interrupted(root, ignoring, *inject)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Aborted!" not in done.stderr
    assert stored_contents(root) == {payload(1): 1}


@needs_strace_root
def test_a_ctrl_c_as_the_handler_is_given_back_ends_the_run_in_one_line(
    root: Path, tmp_path: Path
) -> None:
    """The signal delivered as the command gives Python's handler back, before click's
    own catch is in place: the same one line."""
    command = _ingester("-m")
    log = tmp_path / "sigaction.log"
    trace = ("-e", "trace=rt_sigaction", "-o", str(log))
    traced = _under_strace(command, tmp_path / "warm", ("watch", "--once"), *trace)
    assert traced.returncode == 0, traced.stderr
    calls = [line for line in log.read_text().splitlines() if " rt_sigaction(" in line]
    # Setting SIGINT's handler: Python's own at start, the command's hold, then the
    # hand-back (then the watcher's own handlers).
    sets = [n for n, line in enumerate(calls, 1) if "rt_sigaction(SIGINT, {" in line]
    assert len(sets) >= 3, calls
    inject = ("-e", "trace=rt_sigaction", "-e", f"inject=rt_sigaction:signal=SIGINT:when={sets[2]}")
    done = _interrupted(root, command, *inject)
    assert (done.returncode, done.stderr) == (1, "\nAborted!\n"), done.stderr[-3000:]
    assert not root.exists() or not any(root.iterdir())


def _ran_with_sigint_at_write(
    root: Path, tmp_path: Path, args: list[str], said: str
) -> subprocess.CompletedProcess[str]:
    """``ingester --root ROOT ARGS`` with SIGINT delivered just after it writes the line
    holding ``said`` to standard output (found by tracing a first run on a copy of the
    root): where the command's work is done, and only its ending is left."""
    log = tmp_path / "writes.log"
    warm = tmp_path / "warm"
    shutil.copytree(root, warm, symlinks=True)
    command = _ingester("-m")
    trace = ("-s", "4096", "-e", "trace=write", "-o", str(log))
    traced = _under_strace(command, warm, args, *trace)
    assert traced.returncode == 0, traced.stderr
    calls = [line for line in log.read_text().splitlines() if " write(" in line]
    at = [n for n, line in enumerate(calls, 1) if " write(1, " in line and said in line]
    assert len(at) == 1, calls
    inject = ("-e", "trace=write", "-e", f"inject=write:signal=SIGINT:when={at[0]}")
    return _under_strace(command, root, args, "-o", os.devnull, *inject)


@needs_strace_root
def test_a_ctrl_c_after_a_submit_published_its_drop_does_not_say_it_failed(
    root: Path, tmp_path: Path
) -> None:
    """The drop is published and its path printed when Ctrl-C comes: ending as a failure
    (click's ``Aborted!``, or killed by the signal as Python finalizes) would have the
    writer submit it again, and it would be stored twice."""
    source = tmp_path / "snapshot.json"
    source.write_bytes(payload(1))
    assert run_cli(root, "init").returncode == 0
    args = ["submit", "--name", "one.json", str(source)]
    done = _ran_with_sigint_at_write(root, tmp_path, args, "one.json")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{root / 'spool' / 'one.json'}\n"
    assert (root / "spool" / "one.json").read_bytes() == payload(1)


@needs_strace_root
def test_ingest_stops_after_the_file_in_hand_and_says_which_were_not_stored(
    root: Path, tmp_path: Path
) -> None:
    """Ctrl-C as the first of three files is said stored: that one is stored and said,
    the others neither, and the run names them. As the last is said stored, the run
    ends as if no Ctrl-C had come: a retry of a run said failed would store all twice."""
    files = []
    for n in range(3):
        files.append(tmp_path / f"in-{n}.json")
        files[-1].write_bytes(payload(n))
    args = ["ingest", *map(str, files)]
    first = _ran_with_sigint_at_write(root, tmp_path, args, "in-0.json")
    assert first.returncode == 1, first.stderr
    assert first.stdout.count("\n") == 1 and "stored " + str(files[0]) in first.stdout
    assert first.stderr.endswith(f"stopped: 2 file(s) not stored, from {files[1]} on\n")
    assert stored_contents(root) == Counter([payload(0)])
    shutil.rmtree(tmp_path / "warm")
    last = _ran_with_sigint_at_write(root, tmp_path, args[:1] + args[2:], "in-2.json")
    assert last.returncode == 0, last.stderr
    assert stored_contents(root) == Counter([payload(0), payload(1), payload(2)])


@pytest.mark.parametrize("command", ["watch", "serve --watch"])
def test_a_watcher_started_under_nohup_survives_its_terminal_closing(
    root: Path, command: str
) -> None:
    """``nohup ingester watch &`` (or ``serve --watch``): nohup starts it with SIGHUP
    ignored, so that the terminal closing does not stop it. That SIGHUP stays ignored
    for the whole run: the process keeps taking drops, and SIGTERM still stops it,
    exit 0."""
    nohup = shutil.which("nohup")
    if nohup is None:
        pytest.skip("nohup is not installed")
    started: WatchProcess | ServeProcess
    if command == "watch":
        started = WatchProcess(root, wrapper=(nohup,))
    else:
        started = ServeProcess(root, "--watch", wrapper=(nohup,))
    with started as proc:
        proc.wait_log("ingested 0, rejected 0" if command != "watch" else "watching ")
        # Its handlers are in place by now: SIGHUP is still ignored, not caught.
        assert ignored_signals(proc.proc.pid) & (1 << (signal.SIGHUP - 1)), proc.log
        proc.proc.send_signal(signal.SIGHUP)  # the terminal it was started from closed
        drop(root / "spool", "after.json", payload(9))
        wait_for(lambda: len(stored_contents(root)) == 1, 10, "the drop stored")
        assert proc.proc.poll() is None, proc.log
        assert proc.stop() == 0, proc.log
    assert "stopped: 1 ingested" in proc.log, proc.log


def ignored_signals(pid: int) -> int:
    """The mask of signals process ``pid`` ignores (``SigIgn`` in its status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn in /proc/{pid}/status")


@needs_strace_root
def test_a_watcher_run_under_strace_stops_with_the_test(root: Path) -> None:
    """The suite's own harness: stopping a watcher it started under strace (to delay or
    fail calls) stops the watcher itself. strace given the SIGTERM would detach and exit
    0, and the watcher would run on after the test, unseen."""
    wrapper = (STRACE, "-f", "-qq", "-o", os.devnull, "-e", "trace=none", "--")
    watcher = WatchProcess(root, wrapper=wrapper)
    watcher.wait_log("watching ")
    program = traced_program(watcher.proc.pid)
    assert watcher.stop() == 0, watcher.log
    assert "stopped: " in watcher.log
    wait_for(lambda: not os.path.exists(f"/proc/{program}"), 10, "the watcher gone")


_BLOCKING_STOPS = (
    sys.executable,
    "-c",
    "import os, signal, sys; "
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


def test_a_watcher_started_with_the_stop_signals_blocked_still_stops_on_sigterm(
    root: Path,
) -> None:
    """A blocked signal mask is inherited through exec (a launcher that blocked them
    around its fork and never gave them back): unlike an ignored signal, which the parent
    asked for (nohup), a blocked one would only wait, pending, while ``systemctl stop``
    waits for the kill. The watcher takes them as it takes them otherwise: SIGTERM stops
    it, after the drop in hand, exit 0."""
    with WatchProcess(root, wrapper=_BLOCKING_STOPS) as w:
        drop(root / "spool", "a.json", payload(1))
        wait_for(lambda: len(stored_contents(root)) == 1, 10, "the drop stored")
        code = w.stop(timeout=15)
    assert code == 0, w.log
    assert "stopped: 1 ingested" in w.log, w.log
