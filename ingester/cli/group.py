"""The ``ingester`` command line: the command group, its global options, and every command.

The commands live in their own modules of this package (:mod:`.store`, ``service``,
``serve``, ``status``, ``versions``, ``verify``, ``ops``, ``export``, ``forecast``,
``mirror``), each a ``click.Command`` registered below in one list; what they share is
in :mod:`ingester.cli.common`, and how they open the history in
:mod:`ingester.cli.stores`. A command's module is imported when that command runs (or
``--help`` lists them all), so ``watch`` loads neither the HTTP server nor the report
and export code.

Exit codes: 0 success; 1 the command ran and something was refused or is wrong
(a rejected payload, a problem found, a storage failure, the history locked by
another writer, a file or folder it cannot read); 2 a usage error (a bad option or
setting), before anything is touched; 70 an internal error (a bug: please report it).
Whatever happens, the user sees one line on stderr, never a traceback
(:class:`IngesterGroup` is the one place that makes it so).
"""

from __future__ import annotations

import errno
import importlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click

from ..errors import BadEndpoint, SettingError
from ..runtime.logs import (
    LOG_FORMATS,
    escape_text,
    one_line,
    setup_logging,
    stderr_is_the_journal,
)
from ..runtime.signals import hold_interrupt, release_held_stops
from ..settings.sources import resolve_settings
from ..settings.table import SPECS
from ..threads import THREAD_LIMIT, is_thread_limit
from .advice import before_the_command
from .common import (
    CLOSED_AT_START,
    App,
    PathParam,
    describe_os_error,
    exit_announced,
    forget_announced,
    last_words,
    plugin_usage_line,
    silence_stdout,
)
from .quiet import hold_output, output_was_fine

EXIT_INTERNAL = 70  # sysexits EX_SOFTWARE: a bug, not something the user did
_COMMAND_ARGS = "ingester.command_args"  # ctx.meta key: the arguments after the command

__all__ = ["COMMANDS", "main", "run"]


def _guard_standard_streams() -> None:
    """Put /dev/null on a closed stdin, stdout or stderr.

    Otherwise the next file we open (a lock, a version) would get descriptor 0, 1 or 2,
    and anything that writes to "stdout" would write into it. ``sys.stdin`` stays
    ``None`` so that ``submit -`` can say the stream is closed.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            CLOSED_AT_START.add(fd)
            try:
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:
                return
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _tolerant_stdout() -> None:
    """Make stdout write whole, carry file names that are not UTF-8 (as ``ls`` does), and
    name itself in its write errors.

    Outside the C locale Python's stdout is strict: printing such a name (a path given
    on the command line) would fail after the work was done. And with
    ``PYTHONUNBUFFERED`` set (or ``python -u``) the text layer sits on the raw file,
    whose short write (a reader that went away mid-write, a full disk) it takes as
    complete: the rest of the output would be lost without an error and the command
    would exit 0. A buffered layer between them retries the rest, so that the fault is
    raised. Each ``click.echo`` still flushes at once. A write that fails raises
    :class:`StandardOutputError`, so the error line says where the fault is (a full
    disk under ``> file`` is not the history's).
    """
    stream = sys.stdout
    if not isinstance(stream, io.TextIOWrapper):
        return
    try:
        stream.flush()
        raw = stream.buffer
        if isinstance(raw, io.BufferedWriter):
            raw = raw.raw
        if not isinstance(raw, io.RawIOBase):
            stream.reconfigure(errors="surrogateescape")
            return
        _ORIGINAL_STREAMS.append(stream)  # closing it would close the descriptor's file
        # The text layer writes and flushes through this buffer, so its faults are
        # named there, for text and bytes alike.
        sys.stdout = io.TextIOWrapper(
            _StandardOutputBuffer(raw),
            encoding=stream.encoding,
            errors="surrogateescape",
            line_buffering=stream.line_buffering,
            write_through=True,
        )
    except (OSError, ValueError):
        pass


class StandardOutputError(OSError):
    """A write to standard output failed (not ``EPIPE``: a reader going away stays a
    quiet exit); its ``errno`` and ``strerror`` are the write's."""


class _StandardOutputBuffer(io.BufferedWriter):
    """stdout's bytes (what ``show`` and ``export`` write, and what its text layer
    writes), raising :class:`StandardOutputError` where a write or flush fails."""

    def write(self, data: Any) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            raise _named(exc) from None

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            raise _named(exc) from None


def _named(exc: OSError) -> OSError:
    if exc.errno == errno.EPIPE or isinstance(exc, StandardOutputError):
        return exc
    return StandardOutputError(exc.errno, exc.strerror)


_ORIGINAL_STREAMS: list[io.TextIOWrapper] = []


class IngesterGroup(click.Group):
    """The command group, and the one place where any error becomes one line and an exit.

    click already turns usage errors into exit 2 and a broken stdout pipe into a quiet
    exit 1. Every other ``OSError`` that reaches here (a folder another user owns, a
    missing path, a symlink loop, an I/O error) becomes ``error: ...`` and exit 1; any
    other exception is a bug and becomes one line and exit 70.

    Commands come from :data:`COMMANDS`, each imported on first use.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({name for name, _module, _attr in COMMANDS} | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            for name, module, attr in COMMANDS:
                if name == cmd_name:
                    command = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
                    self.add_command(command, name)
        return self.commands.get(cmd_name)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        command_args = self._command_args(list(args))  # read first: parsing consumes it
        try:
            with _one_line_message(command_args[0] if command_args else None):
                return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            # A bad global option (an unknown one, a value click rejects) fails here,
            # before any command runs: 'check' still owes its agent the plugin line.
            if command_args[:1] == ["check"]:
                plugin_usage_line(exc, as_json="--json" in command_args[1:])
            raise

    def _command_args(self, args: list[str]) -> list[str]:
        """The command's name and the arguments after it, as the group's parser would
        split ``args``: each of the group's options that takes a value skips it (when
        not given as ``--option=value``). An unknown option takes the argument after it
        unless that is an option or a command's name: a command's own option put before
        the command (``--max-age 15m check``) comes with its value."""
        known = {name for param in self.params for name in param.opts + param.secondary_opts}
        takes_value = {
            name
            for param in self.params
            if isinstance(param, click.Option) and not param.is_flag and not param.count
            for name in param.opts
        }
        names = {name for name, _module, _attr in COMMANDS}
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                return args[i + 1 :]
            if not arg.startswith("-") or arg == "-":
                return args[i:]
            after = args[i + 1] if i + 1 < len(args) else "-"
            unknown = arg not in known and "=" not in arg
            if arg in takes_value or (unknown and not after.startswith("-") and after not in names):
                i += 2
            else:
                i += 1
        return []

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in STOPS_CLEANLY:
            # Named: from here on (its module loading, its start) a Ctrl-C is its clean
            # stop too, as a SIGTERM is, once its handlers are in.
            hold_interrupt()
        name, command, rest = super().resolve_command(ctx, args)
        if name not in STOPS_CLEANLY:
            # A stop signal held while the commands loaded ends this one as it always did.
            release_held_stops()
        # Kept for the group's own callback, which runs before the command parses them:
        # a bad setting found there still gives 'check' its plugin line (--json or not).
        ctx.meta[_COMMAND_ARGS] = list(rest)
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_message():
            try:
                return super().invoke(ctx)
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
                # The reader went away: a quiet exit, as click makes it, but with the
                # code a line already given announced (check's verdict), not always 1.
                silence_stdout()
                raise click.exceptions.Exit(exit_announced(1)) from None

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        if extra.get("standalone_mode") is False:
            # Called from Python (tests, embedding): the caller handles what is raised.
            return super().main(args, prog_name, **extra)
        forget_announced()
        _guard_standard_streams()
        _tolerant_stdout()
        try:
            super().main(args, prog_name, **extra)
        except OSError as exc:
            # A CRITICAL line already printed keeps its exit code when what follows it
            # (the usage text on stderr) cannot be written: the agent reads both.
            if exc.errno == errno.EPIPE:
                silence_stdout()
                sys.exit(exit_announced(1))
            said = describe_os_error(exc)
            if isinstance(exc, StandardOutputError):
                said = f"cannot write to standard output: {said}"
            last_words(said)
            # Output a failed write left in stdout's buffer must not follow the error
            # line (nor fail again in the flush at exit).
            silence_stdout()
            sys.exit(exit_announced(1))
        except MemoryError:
            last_words("out of memory")
            sys.exit(1)
        except Exception as exc:
            if is_thread_limit(exc):
                last_words(THREAD_LIMIT)
                sys.exit(1)
            detail = str(exc) or "no detail"
            last_words(f"internal error: {type(exc).__name__}: {detail} (please report)")
            sys.exit(EXIT_INTERNAL)
        sys.exit(0)  # pragma: no cover (click's standalone main always exits)


@contextmanager
def _one_line_message(command: str | None = None) -> Iterator[None]:
    """A usage error's message, which may quote a path or a value given, kept to its one
    ``Error:`` line: a newline or an escape in it is written escaped, as ``say`` does.
    An option refused on one side of the command that exists on the other (``command``:
    the name given after the group's options, if any) is told where it belongs."""
    try:
        yield
    except click.NoSuchOption as exc:
        where = _where_it_belongs(exc, command)
        if where:
            # The option exists: a close match among the others would send the user astray.
            exc.message = f"{exc.message.rstrip('.')} here: {where}"  # type: ignore[misc]
            exc.possibilities = None  # type: ignore[misc]
        exc.message = escape_text(one_line(exc.message))  # type: ignore[misc]
        _shown_for_the_journal(exc)
        raise
    except click.ClickException as exc:
        # Rewritten in place, so a bad parameter keeps its option's name and its context.
        exc.message = _bytes_said(escape_text(one_line(exc.message)))  # type: ignore[misc]
        _shown_for_the_journal(exc)
        raise
    except BadEndpoint as exc:
        # Found where the client is made (a command's body, or its service loop).
        raise click.UsageError(escape_text(one_line(str(exc)))) from None


# A value quoted by its repr (``'ab\\udcffc'``) says a byte that is not UTF-8 by the
# surrogate Python carries it as, which names no byte: said as the log says it instead.
_SURROGATE_REPR = re.compile(r"(?<!\\)\\udc([89a-f][0-9a-f])")


def _bytes_said(message: str) -> str:
    """``message`` with each surrogate a repr wrote (``\\udcff``) as ``\\xff``."""
    return _SURROGATE_REPR.sub(r"\\x\1", message)


def _shown_for_the_journal(exc: click.ClickException) -> None:
    """Where stderr is the journal, have click show ``exc`` with its ``Error:`` line at
    the error priority (``<3>``, which journald takes off): a service that fails to start
    on a bad setting is then found by ``journalctl -p warning``. Elsewhere, unchanged."""
    if not stderr_is_the_journal():
        return
    show = exc.show

    def show_for_the_journal(file: IO[Any] | None = None) -> None:
        text = io.StringIO()
        show(text)
        out = file if file is not None else sys.stderr
        for line in text.getvalue().splitlines():
            out.write(f"<3>{line}\n" if line.startswith("Error: ") else f"{line}\n")
        out.flush()

    exc.show = show_for_the_journal  # type: ignore[method-assign]


def _where_it_belongs(exc: click.NoSuchOption, command: str | None) -> str:
    """Where the option ``exc`` refuses belongs: before the command for an option of the
    group given after it, after the command for one of ``command``'s given before it;
    ``""`` for an option neither has.

    Most tools take their options anywhere (``ingester watch --root DIR``): "No such
    option" alone would say that an option ``ingester --help`` lists does not exist.
    """
    name, ctx = exc.option_name, exc.ctx
    if ctx is None:
        return ""
    if ctx.parent is not None:  # the command's own parser refused it
        if any(name in p.opts + p.secondary_opts for p in main.params):
            return before_the_command(name, ctx.info_name or "")
        return ""
    found = main.get_command(ctx, command) if command is not None else None
    if found is not None and any(name in p.opts + p.secondary_opts for p in found.params):
        return (
            f"it is an option of '{command}'; give it after the command, "
            f"as in 'ingester {command} {name} ...'"
        )
    return ""


def _setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One global option per row of the settings table (name, metavar, help, env, default)."""
    for spec in reversed(SPECS):
        command = click.option(spec.option, metavar=spec.metavar, help=spec.help_text)(command)
    return command


@click.group(
    cls=IngesterGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@_setting_options
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    type=PathParam(as_path=True, dir_okay=False, readable=True),
    help="TOML file with an [ingester] table; keys as the long options with '_'. "
    "Precedence: option > environment > config > default. [env INGESTER_CONFIG]",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log debug detail (-vv: also from libraries such as watchdog).",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="For cron: print nothing when the command succeeds; on failure its output goes to "
    "stderr. Informational log lines are dropped.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="json: one object per line, for log shippers.",
)
@click.version_option(package_name="console-usage-ingester")
@click.pass_context
def main(
    ctx: click.Context,
    /,
    config_path: Path | None,
    verbose: int,
    quiet: bool,
    log_format: str,
    **options: Any,
) -> None:
    """Keep a durable, versioned history of console usage snapshots dropped into a spool folder.

    A scraper drops JSON files into the spool (see 'ingester submit'); 'ingester watch'
    validates each one, stores it as an immutable version in the history, points the
    latest link at it, refreshes _metadata.json and applies retention.
    """
    try:
        settings = resolve_settings(options, config_path=config_path)
    except SettingError as exc:
        if _asks_for_help(ctx):
            return  # the command shows its help and exits before it would need them
        error = click.UsageError(str(exc), ctx)
        if ctx.invoked_subcommand == "check":
            # A monitoring agent shows the plugin's stdout only: a bad setting in its
            # environment or the shared config file must alert with its cause too.
            plugin_usage_line(error, as_json="--json" in ctx.meta.get(_COMMAND_ARGS, []))
        raise error from None
    setup_logging(verbose, log_format)
    if quiet:
        hold_output(ctx)
    ctx.obj = App(settings, log_format)


def _asks_for_help(ctx: click.Context) -> bool:
    """Whether the command about to run was given ``--help`` (or ``-h``), as its own
    parser reads its arguments: it then only shows its help, which needs no settings.
    Arguments its parser refuses are no request for help."""
    name = ctx.invoked_subcommand
    command = main.get_command(ctx, name) if name is not None else None
    help_option = command.get_help_option(ctx) if command is not None else None
    if command is None or help_option is None:
        return False
    try:
        opts, _args, _order = command.make_parser(ctx).parse_args(
            list(ctx.meta.get(_COMMAND_ARGS, []))
        )
    except click.ClickException:
        return False
    return bool(opts.get(help_option.name))


@main.result_callback()
@click.pass_context
def _finished(ctx: click.Context, /, *_: Any, **__: Any) -> None:
    output_was_fine(ctx)


COMMANDS = (
    ("init", "store", "init"),
    ("adopt", "store", "adopt"),
    ("ingest", "store", "ingest"),
    ("cleanup", "store", "cleanup"),
    ("watch", "service", "watch"),
    ("submit", "service", "submit"),
    ("serve", "serve", "serve"),
    ("status", "status", "status"),
    ("list", "versions", "list_versions"),
    ("show", "versions", "show"),
    ("verify", "verify", "verify"),
    ("snapshot", "ops", "snapshot"),
    ("schema", "ops", "schema"),
    ("check", "ops", "check"),
    ("forecast", "forecast", "forecast"),
    ("export", "export", "export"),
    ("mirror", "mirror", "mirror"),
    ("restore", "mirror", "restore"),
)
"""Every command: its name, and the module and ``click.Command`` that define it."""

STOPS_CLEANLY = frozenset({"watch", "serve", "mirror", "ingest"})
"""The commands that stop cleanly on SIGTERM, SIGINT and SIGHUP: a SIGTERM or SIGHUP that
came while the command line loaded (held, :func:`ingester.runtime.signals.hold_stop_signals`)
is their clean stop too, once their handlers are in, and so is a Ctrl-C from the moment
the command is named (:func:`ingester.runtime.signals.hold_interrupt`); one before that
ends the run at once (``Aborted!``, exit 1), as for any command."""


def run() -> None:
    """Run the command line as ``ingester`` (what :func:`ingester.__main__.main` calls)."""
    main(prog_name="ingester")


if __name__ == "__main__":  # pragma: no cover
    run()
