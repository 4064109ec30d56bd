"""The documentation against the repository and the real CLI.

Every relative link in README.md, docs/ and spool/README.md names a file that exists
(and a heading that exists, where it names one); the README's two newcomer commands are
the ones a user types, the test one being exactly what CI runs; the commands, options and
environment variables the README and the operations guide list are the ones
``ingester --help`` shows; every option any command's ``--help`` lists is documented, and
the operations guide gives each command a section with all of its options; the quoted
``status`` output shows the settings a real run prints; the README names every command
that refuses while a watcher runs; every Python block in the docs is a marked example
(``<!-- example: NAME -->``) that runs as written against real data (the Python API, the
polars recipe on a real export, the scraper's drop function with a real watcher); every
shell block (```sh, ```console) is run by a test its marker names, or is marked
``<!-- not run: REASON -->`` where it needs what a test machine lacks (a booted systemd,
the host's /etc, the package index, a real cloud account).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from support import cli_env, run_cli, wait_for
from support.capabilities import other_user_problem
from support.ports import free_port
from support.watchproc import WatchProcess
from test_mirror import aws_files, bucket, s3  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", REPO / "spool" / "README.md", *(REPO / "docs").glob("*.md")])
FULL_SAMPLE = REPO / "tests" / "samples" / "valid" / "full.json"
INVALID = REPO / "tests" / "samples" / "invalid" / "percentage-out-of-range.json"
VALID_SAMPLES = sorted((REPO / "tests" / "samples" / "valid").glob("*.json"))

WATCH_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/ingester watch"

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """Markdown without fenced blocks and code spans: where links are links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = _FENCE.sub("", path.read_text())
    return frozenset(slug(m) for m in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M))


def relative_links(doc: Path) -> list[str]:
    return [
        target
        for target in _LINK.findall(prose(doc.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_names_a_file_and_heading_that_exist(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def test_every_guide_in_docs_is_linked_from_the_readme() -> None:
    linked = {(REPO / t.partition("#")[0]).resolve() for t in relative_links(REPO / "README.md")}
    orphans = [p.name for p in (REPO / "docs").glob("*.md") if p.resolve() not in linked]
    assert not orphans, f"guides in docs/ that README.md does not link: {orphans}"


def shell_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)]


def test_the_readme_gives_the_newcomer_the_commands_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    ci_test = [s for s in map(str.strip, ci.splitlines()) if s.startswith("python3 -m venv .venv")]
    assert len(ci_test) == 2, ".ci/run should run one install-and-test command, and --newest"
    locked, newest = ci_test
    blocks = shell_blocks((REPO / "README.md").read_text())
    assert blocks[0] == WATCH_COMMAND, "the README's first command installs and runs the watcher"
    assert locked in blocks, f"the README does not show the command .ci/run runs: {locked}"
    assert " -c constraints.txt " in locked, "CI installs the lock"
    # The scheduled job runs the same suite, only without the lock.
    assert newest.removesuffix(" || exit") == locked.replace(" -c constraints.txt", "")


@cache
def help_text(*command: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ingester", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")},
        timeout=60,
    )
    return result.stdout


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in _FENCE.sub("", text).splitlines():
        if line.startswith("|") and not re.match(r"\|[-:| ]+\|$", line):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_the_readme_commands_table_matches_the_cli() -> None:
    listed = help_text().split("Commands:", 1)[1]
    cli_commands = set(re.findall(r"^  (\w+)", listed, re.M))
    seen = set()
    for row in table_rows((REPO / "README.md").read_text()):
        if not row[0].startswith("`ingester "):
            continue
        names = re.findall(r"`(?:ingester )?(\w+)[^`]*`", row[0])
        options = re.findall(r"(--[a-z][a-z-]*)", row[0])
        command = names[0]
        assert command in cli_commands, f"README lists 'ingester {command}', the CLI has no such"
        for option in options:
            assert option in help_text(command), f"'ingester {command}' has no {option}"
        seen.update(n for n in names if n in cli_commands)
    assert seen == cli_commands, f"commands missing from the README's table: {cli_commands - seen}"


@pytest.mark.parametrize("doc", ["README.md", "docs/operations.md"])
def test_documented_settings_are_the_cli_s(doc: str) -> None:
    # A settings row names its environment variable first in its second column; other
    # tables (a command's options) may mention a variable in passing.
    rows = [
        r for r in table_rows((REPO / doc).read_text()) if r[1:2] and r[1].startswith("`INGESTER_")
    ]
    assert rows, f"{doc} has no settings table"
    for row in rows:
        for option in re.findall(r"(--[a-z][a-z-]*)", row[0]):
            assert option in help_text(), f"{doc}: 'ingester' has no global option {option}"
        for env in re.findall(r"INGESTER_[A-Z_]+", row[1]):
            assert env in help_text(), f"{doc}: {env} is not a setting's environment variable"


def test_the_watch_options_in_the_operations_guide_are_the_cli_s() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## `ingester watch`", 1)[1].split("\n## ", 1)[0]
    documented = {row[0].strip("`").split()[0] for row in table_rows(section)[1:]}
    actual = set(re.findall(r"^  (--[a-z-]+)", help_text("watch"), re.M)) - {"--help"}
    assert documented == actual


# -- code blocks that claim to work run as tests ---------------------------------------------

_EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.S)


def marked_examples() -> dict[str, tuple[Path, str, str]]:
    """Every ``<!-- example: NAME -->`` block in the docs: name -> (doc, language, code)."""
    found: dict[str, tuple[Path, str, str]] = {}
    for doc in DOCS:
        for name, language, code in _EXAMPLE.findall(doc.read_text()):
            assert name not in found, f"two examples named {name}"
            found[name] = (doc, language, code)
    return found


def run_python(code: str, cwd: Path, *, after: str = "") -> subprocess.CompletedProcess[str]:
    """``code`` (then the test's own ``after`` lines) in a fresh interpreter in ``cwd``."""
    result = subprocess.run(
        [sys.executable, "-c", code + "\n" + after],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def example_python_api(code: str, tmp_path: Path) -> None:
    shutil.copy(FULL_SAMPLE, tmp_path / "snapshot.json")
    run_python(code, tmp_path)
    versions = list((tmp_path / "console-usage-history").glob("2*.json"))
    assert len(versions) == 1
    assert versions[0].read_bytes() == FULL_SAMPLE.read_bytes()
    assert (tmp_path / "console-usage-synced.json").resolve() == versions[0].resolve()
    # Beside a running watcher it raises LockHeld having changed nothing: a temp file
    # the watcher is writing stays (the store's start sweeps temp files).
    with WatchProcess(tmp_path):
        inflight = tmp_path / "console-usage-history" / ".tmp-w-inflight"
        inflight.write_bytes(b"{")
        refused = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 1 and "LockHeld" in refused.stderr, refused.stderr
        assert inflight.exists()
        inflight.unlink()


def example_polars_read_back(code: str, tmp_path: Path) -> None:
    """The recipe reads a real export whose percentages turn fractional after 100 rows."""
    pytest.importorskip("polars")
    sources = []
    for i in range(104):
        body: dict[str, object] = {
            "currentSession": {"resetsIn": "4 hr", "percentageUsed": i % 100 if i < 100 else 7.5},
            "lastUpdated": f"2026-11-27T{i // 60:02d}:{i % 60:02d}:00Z",
        }
        if i == 102:
            body["weeklyLimits"] = {
                "allModels": {"resetsIn": "Mon", "percentageUsed": 41.25},
                "sonnetOnly": {"resetsIn": "Mon", "percentageUsed": 3},
            }
            body["isPartial"] = True
        source = tmp_path / "in" / f"{i:03d}.json"
        source.parent.mkdir(exist_ok=True)
        source.write_text(json.dumps(body))
        sources.append(str(source))
    assert run_cli(tmp_path, "ingest", *sources).returncode == 0
    assert run_cli(tmp_path, "export", "-o", str(tmp_path / "usage.csv")).returncode == 0
    check = (
        "assert usage.height == 104, usage.height\n"
        "assert usage['currentSession.percentageUsed'].to_list()[99:101] == [99.0, 7.5]\n"
        "assert usage['weeklyLimits.allModels.percentageUsed'].to_list()[102] == 41.25\n"
        "assert usage['isPartial'].to_list()[101:103] == [None, True]\n"
        "assert str(usage['ingestedAt'].dtype) == \"Datetime(time_unit='us', time_zone='UTC')\"\n"
        "assert usage['lastUpdated'][0].isoformat() == '2026-11-27T00:00:00+00:00'\n"
    )
    run_python(code, tmp_path, after=check)


def example_scraper_drop(code: str, tmp_path: Path) -> None:
    """The function drops valid payloads durably into a spool the watcher takes them
    from: three drops in one second from one process, none taken yet, are three drops."""
    assert run_cli(tmp_path, "init").returncode == 0
    snapshot = json.loads(FULL_SAMPLE.read_text())
    snapshots = [{**snapshot, "seq": seq} for seq in range(3)]
    calls = "".join(f"drop({s!r})\n" for s in snapshots)
    run_python(code, tmp_path, after=calls)
    drops = [p for p in (tmp_path / "spool").iterdir() if p.suffix == ".json"]
    assert sorted((json.loads(p.read_text()) for p in drops), key=lambda s: s["seq"]) == snapshots
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
    assert run_cli(tmp_path, "watch", "--once").returncode == 0
    stored = (tmp_path / "console-usage-history").glob("2*.json")
    assert sorted(json.loads(p.read_text())["seq"] for p in stored) == [0, 1, 2]


EXAMPLE_RUNS = {
    "python-api": example_python_api,
    "polars-read-back": example_polars_read_back,
    "scraper-drop": example_scraper_drop,
}
# Shell examples, and those that need a server a module of their own starts:
# name -> (test file, test); the test names the example to find its block.
HERE = "tests/test_docs.py"
EXAMPLES_RUN_ELSEWHERE = {
    "aws-browse": ("tests/test_mirror.py", "test_the_documented_aws_cli_look_at_the_bucket"),
    "mirror-read-from": (HERE, "test_the_mirror_guide_s_read_from_the_object_store_block_runs"),
    "mirror-serve-from": (
        "tests/test_mirror.py",
        "test_the_documented_serve_from_line_serves_the_mirror",
    ),
    "scrape-trigger": (
        "tests/test_systemd_single.py",
        "test_the_documented_trigger_command_touches_the_file_under_mdwe",
    ),
    "readme-submit": (HERE, "test_the_readme_s_submit_blocks_drop_what_the_watcher_stores"),
    "readme-submit-fresh": (HERE, "test_the_readme_s_submit_blocks_drop_what_the_watcher_stores"),
    "backup-snapshot": (HERE, "test_the_backup_guide_s_snapshot_variables_and_restored_verify_run"),
    "backup-variables": (
        HERE,
        "test_the_backup_guide_s_snapshot_variables_and_restored_verify_run",
    ),
    "backup-verify-restored": (
        HERE,
        "test_the_backup_guide_s_snapshot_variables_and_restored_verify_run",
    ),
    "backup-restore-into-the-service": (
        HERE,
        "test_the_backup_guide_s_restore_into_the_service_runs",
    ),
    "scraper-schema": (HERE, "test_the_scraper_guide_s_blocks_run"),
    "scraper-ci": (HERE, "test_the_scraper_guide_s_blocks_run"),
    "service-read-commands": (HERE, "test_the_service_guide_s_read_commands_run"),
    "monitoring-check-mirror": (HERE, "test_the_check_transcript_of_a_mirror_behind_runs"),
    "backup-live-excludes": (HERE, "test_the_live_copy_excludes_leave_out_what_they_name"),
    "page-export": (HERE, "test_the_export_transcript_runs"),
    "operations-watch": (HERE, "test_each_documented_watch_line_stores_a_drop"),
    **dict.fromkeys(
        ["monitoring-check-ok", "monitoring-check-forecast", "operations-forecast"],
        (HERE, "test_the_check_and_forecast_transcripts_run"),
    ),
    "monitoring-check-eacces": (
        HERE,
        "test_the_check_transcript_as_a_user_outside_the_groups_runs",
    ),
    **dict.fromkeys(
        ["serve-one-process", "serve-beside-watcher", "serve-curl", "serve-trigger"],
        (HERE, "test_the_serve_guide_s_blocks_serve_and_store"),
    ),
    "readme-try-it": (
        HERE,
        "test_the_readme_s_try_it_block_runs_as_the_original_s_clients_would",
    ),
    "migrating-try-it": (HERE, "test_the_migrating_guide_s_try_it_block_adopts_a_copy"),
    "migrating-copy-to-server": (
        HERE,
        "test_the_migrating_guide_s_copy_to_the_server_cannot_land_inside_a_history",
    ),
    "migrating-try-it-output": (HERE, "test_the_migrating_guide_s_transcripts_and_going_back_run"),
    "migrating-nested": (HERE, "test_the_migrating_guide_s_transcripts_and_going_back_run"),
    "migrating-back": (HERE, "test_the_migrating_guide_s_transcripts_and_going_back_run"),
    **dict.fromkeys(
        [
            "operations-errors",
            "operations-status",
            "operations-list",
            "operations-show",
            "operations-show-errors",
            "operations-list-damaged",
            "operations-verify",
            "operations-verify-repair",
            "operations-verify-locked",
        ],
        (HERE, "test_the_operations_guide_s_transcripts_run"),
    ),
    **dict.fromkeys(
        ["operations-ingest", "operations-cleanup"],
        (HERE, "test_the_operations_guide_s_ingest_and_cleanup_transcripts_run"),
    ),
}


def test_every_python_block_in_the_docs_is_an_example_that_runs() -> None:
    """No Python block in the docs is left unmarked, and every marked one has a run."""
    for doc in DOCS:
        text = doc.read_text()
        blocks = len(re.findall(r"^```python\n", text, re.M))
        marked = len(re.findall(r"<!-- example: [\w-]+ -->\n```python\n", text))
        assert blocks == marked, f"{doc.relative_to(REPO)}: a Python block is not an example"
    assert set(marked_examples()) == set(EXAMPLE_RUNS) | set(EXAMPLES_RUN_ELSEWHERE)
    for path, test in EXAMPLES_RUN_ELSEWHERE.values():
        assert f"def {test}(" in (REPO / path).read_text(), f"{path} has no {test}"


_SHELL_FENCE = re.compile(r"^```(?:sh|bash|shell|console)\n", re.M)
_RUN_MARK = re.compile(r"<!-- (example|recipe): ([\w-]+) -->|<!-- not run: (.+?) -->")
RECIPES_RUNNER = "tests/test_backup_recipes.py"


def shell_block_marks(doc: Path) -> list[tuple[int, str]]:
    """Every shell block of ``doc``: (line number, the line right above its fence)."""
    text = doc.read_text()
    found = []
    for fence in _SHELL_FENCE.finditer(text):
        before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((text.count("\n", 0, fence.start()) + 1, before))
    return found


def test_every_shell_block_in_the_docs_runs_or_says_why_it_cannot() -> None:
    """A shell block a user would type is run by a test its marker names, or is marked
    ``<!-- not run: REASON -->`` with a reason that says what the run needs."""
    unmarked, unknown, vague = [], [], []
    recipes = set(re.findall(r"<!-- recipe: ([\w-]+) -->", (REPO / "docs/backup.md").read_text()))
    runner = (REPO / RECIPES_RUNNER).read_text()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for line, above in shell_block_marks(doc):
            where = f"{doc.relative_to(REPO)}:{line}"
            mark = _RUN_MARK.fullmatch(above.strip())
            if mark is None:
                unmarked.append(where)
            elif mark.group(1) == "example" and mark.group(2) not in EXAMPLES_RUN_ELSEWHERE:
                unknown.append(f"{where}: example {mark.group(2)} has no run")
            elif mark.group(1) == "recipe" and (
                doc.name != "backup.md" or "recipes()" not in runner or mark.group(2) not in recipes
            ):
                unknown.append(f"{where}: recipe {mark.group(2)} is not run by {RECIPES_RUNNER}")
            elif mark.group(3) is not None and len(mark.group(3).split()) < 6:
                vague.append(f"{where}: {mark.group(3)!r}")
    assert not unmarked, f"shell blocks neither run nor marked 'not run': {unmarked}"
    assert not unknown, f"shell blocks whose marker names no run: {unknown}"
    assert not vague, f"'not run' reasons too short to say what the block needs: {vague}"
    for name, (path, test) in EXAMPLES_RUN_ELSEWHERE.items():
        source = (REPO / path).read_text()
        assert f"def {test}(" in source, f"{path} has no {test}"
        body = source.split(f"def {test}(", 1)[1].split("\ndef ", 1)[0]
        assert name in body, f"{path}::{test} does not find the example {name} by its name"


@pytest.mark.parametrize("name", sorted(EXAMPLE_RUNS))
def test_the_docs_example_runs_as_written(name: str, tmp_path: Path) -> None:
    _doc, language, code = marked_examples()[name]
    assert language == "python"
    EXAMPLE_RUNS[name](code, tmp_path)


def test_the_docs_the_program_and_its_units_point_to_exist() -> None:
    sources = [*(REPO / "ingester").rglob("*.py"), *(REPO / "systemd").iterdir(), REPO / ".ci/run"]
    missing = sorted(
        f"{path.relative_to(REPO)}: {name}"
        for path in sources
        for name in re.findall(r"\b(docs/[\w.-]+\.(?:md|json))", path.read_text())
        if not (REPO / name).exists()
    )
    assert not missing, f"references to documents that do not exist: {missing}"


def cli_commands() -> list[str]:
    listed = help_text().split("Commands:", 1)[1]
    return sorted(re.findall(r"^  (\w+)", listed, re.M))


def listed_options(help_output: str) -> set[str]:
    """The options a --help lists, by their long name (the short one where there is none)."""
    section = help_output.split("Options:", 1)[1]
    options = set()
    for line in section.splitlines():
        if not re.match(r"  +-", line):
            continue
        names = [n.split()[0] for n in re.split(r"  +", line.strip(), maxsplit=1)[0].split(", ")]
        long_names = [n for n in names if n.startswith("--")]
        options.update(long_names or names)
    return options - {"-h", "--help"}


@pytest.mark.parametrize("command", ["", *cli_commands()], ids=lambda c: c or "global")
def test_every_option_the_cli_lists_is_documented(command: str) -> None:
    docs = "\n".join(p.read_text() for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")])
    options = listed_options(help_text(*filter(None, [command])))
    missing = sorted(o for o in options if not re.search(rf"(?<![\w-]){o}(?![\w-])", docs))
    assert not missing, f"'ingester {command} --help' lists options no doc mentions: {missing}"


def sections_naming(text: str, command: str) -> str:
    """The operations guide's sections whose heading names the command, with their subsections."""
    text = _FENCE.sub("", text)
    found = []
    for match in re.finditer(r"^(#{2,6}) +(.+)$", text, re.M):
        if re.search(rf"`(?:ingester )?{command}\b", match.group(2)):
            end = re.compile(rf"^#{{2,{len(match.group(1))}}} ", re.M).search(text, match.end())
            found.append(text[match.end() : end.start() if end else len(text)])
    return "\n".join(found)


@pytest.mark.parametrize("command", cli_commands())
def test_the_operations_guide_gives_every_command_its_options(command: str) -> None:
    section = sections_naming((REPO / "docs" / "operations.md").read_text(), command)
    assert section, f"docs/operations.md has no section whose heading names '{command}'"
    options = listed_options(help_text(command))
    missing = sorted(o for o in options if not re.search(rf"(?<![\w-]){o}(?![\w-])", section))
    assert not missing, f"docs/operations.md's '{command}' section lacks {missing}"


def test_the_quoted_status_output_shows_every_setting_a_real_run_prints(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "init").returncode == 0
    real = run_cli(tmp_path, "status")
    assert real.returncode == 0, real.stderr
    text = (REPO / "docs" / "operations.md").read_text()
    quotes = re.findall(r"```console\n\$ ingester --root \S+ status\n(.*?)```", text, re.S)
    quote = next((q for q in quotes if "\nsettings:\n" in q), None)
    assert quote, "docs/operations.md quotes no 'ingester status' output with its settings"

    def settings(output: str) -> list[str]:
        return re.findall(r"^  (\w+) ", output.split("\nsettings:\n", 1)[1], re.M)

    assert settings(quote) == settings(real.stdout)


def test_the_readme_names_every_command_that_refuses_while_a_watcher_runs() -> None:
    sources = "".join(p.read_text() for p in (REPO / "ingester" / "cli").glob("*.py"))
    writers = set(re.findall(r"writing_store\(\w+, \"([\w -]+)\"\)", sources))
    assert writers, "no command takes the history lock through writing_store"
    readme = " ".join((REPO / "README.md").read_text().split())
    sentence = re.search(r"The commands that write, ([^.]*) refuse", readme)
    assert sentence, "the README does not say which commands refuse while a watcher runs"
    assert {w for w in writers if f"`{w}`" not in sentence.group(1)} == set()


def _run_block(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``script`` run by bash in ``cwd``, without the caller's INGESTER_* variables."""
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")},
        check=False,
    )


def _as_here(block: str) -> str:
    """The block with this environment's interpreter for the checkout's ``.venv/bin/ingester``."""
    return block.replace(".venv/bin/ingester", f"{sys.executable} -m ingester")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_s_try_it_block_runs_as_the_original_s_clients_would(tmp_path: Path) -> None:
    block = example("readme-try-it")
    assert "PORT=4000 CLAUDE_SYNC_API_KEY=" in block and "serve --watch" in block
    port = free_port()
    script = _as_here(block).replace("4000", str(port)).replace("/tmp/usage", str(tmp_path))
    done = _run_block(script, REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"success":true' in done.stdout, done.stdout + done.stderr
    assert '"source":"ec2-sync"' in done.stdout, done.stdout + done.stderr
    assert f"listening on http://127.0.0.1:{port}" in done.stderr
    assert "serve --watch: stopped" in done.stderr and "Traceback" not in done.stderr
    assert len(list((tmp_path / "console-usage-history").glob("20*.json"))) == 1


def _with_original(block: str, original: Path, **values: str) -> str:
    """A migrating.md block as a user would run it here: ``ORIGINAL=`` (and the other
    ``NAME=`` lines given) set to these paths, ``ingester`` this environment's, no sudo."""
    lines = []
    for line in block.splitlines():
        for name, value in {"ORIGINAL": str(original), **values}.items():
            if line.startswith(f"{name}="):
                line = f"{name}={shlex.quote(value)}"
        lines.append(line)
    script = "\n".join(lines).replace("sudo ", "")
    return script.replace("ingester --root", f"{sys.executable} -m ingester --root")


def test_the_migrating_guide_s_try_it_block_adopts_a_copy(tmp_path: Path) -> None:
    from test_adopt import original_history

    original = tmp_path / "server" / "claude-scraper"
    original.mkdir(parents=True)
    original_history(original)
    block = example("migrating-try-it")
    assert "ORIGINAL=" in block and "mktemp -d" in block
    temp = tmp_path / "tmp"
    temp.mkdir()
    script = f"export TMPDIR={shlex.quote(str(temp))}\n" + _with_original(block, original)
    for run in (1, 2):  # a second run makes a second copy, never one inside the first
        done = _run_block(script, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "has write bits" in done.stdout  # the first verify, before
        assert "run 'ingester adopt'" in done.stdout  # ... points to adopt
        assert "verify:  ok" in done.stdout and done.stdout.rstrip().endswith("ok")
        copies = sorted(temp.glob("*/claude-scraper"))
        assert len(copies) == run
        assert all((c / "console-usage-synced.json").is_symlink() for c in copies)
        assert not list(temp.glob("*/claude-scraper/claude-scraper"))
    assert not (original / "console-usage-synced.json").is_symlink(), "the original was touched"


def test_the_migrating_guide_s_copy_to_the_server_cannot_land_inside_a_history(
    tmp_path: Path,
) -> None:
    from test_adopt import original_history

    original = tmp_path / "server" / "claude-scraper"
    original.mkdir(parents=True)
    o = original_history(original, latest="unique")
    # An original that ran with umask 077: files 0600, the folder 0700.
    for path in [*o.history.iterdir(), original / "console-usage-synced.json"]:
        path.chmod(0o600)
    o.history.chmod(0o700)
    block = example("migrating-copy-to-server")
    root = tmp_path / "var-lib"
    root.mkdir()
    script = _with_original(block, original, ROOT=str(root))
    done = _run_block(script, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    history = root / "console-usage-history"
    assert sorted(p.name for p in history.iterdir()) == sorted(p.name for p in o.history.iterdir())
    assert (root / "console-usage-synced.json").read_bytes() == o.latest
    # Again, onto the history now there: refused, nothing copied into it or over it.
    before = sorted(p.name for p in history.iterdir())
    again = _run_block(script, tmp_path)
    assert again.returncode != 0 and "File exists" in again.stderr
    assert sorted(p.name for p in history.iterdir()) == before
    assert not (history / "console-usage-history").exists()
    # And the next step of the guide adopts what was copied (from a shell whose umask is
    # 077 too), then gives the service's group read access to all of it.
    adopted = sh(f"umask 077; ingester --root {shlex.quote(str(root))} adopt", tmp_path)
    assert adopted.returncode == 0, adopted.stdout
    group_read = 'sudo chmod -R g+rX "$ROOT/console-usage-history"'
    assert group_read in (REPO / "docs" / "migrating.md").read_text()
    assert (
        sh(f"ROOT={shlex.quote(str(root))}\n{group_read.replace('sudo ', '')}", tmp_path).returncode
        == 0
    )
    for path in [history, *history.iterdir()]:
        mode = path.stat().st_mode
        assert mode & stat.S_IRGRP and not mode & 0o022, f"{path.name}: {mode:o}"
        assert not path.is_dir() or mode & stat.S_IXGRP, f"{path.name}: {mode:o}"
    versions = [p for p in history.iterdir() if p.name[:1].isdigit()]
    assert all(not p.stat().st_mode & 0o222 for p in versions)


# -- the shell blocks, run as the user types them -------------------------------------------
#
# A block runs by bash in a scratch folder, ``ingester`` being this checkout's installed
# command (first on PATH). Only paths and ports are substituted, in the test, visibly;
# a transcript (```console) has each ``$ `` command run and its output compared with the
# one shown, by shape: times, ages, ids and numbers stand for any, columns for any width,
# ``...`` for anything.

INGESTER_BIN = Path(sys.executable).parent


def example(name: str) -> str:
    """The code of the marked example ``name``."""
    return marked_examples()[name][2]


def substituted(text: str, paths: dict[str, str | Path]) -> str:
    """``text`` with each doc path (key) replaced by this run's (value), longest first."""
    for doc_path in sorted(paths, key=len, reverse=True):
        text = text.replace(doc_path, str(paths[doc_path]))
    return text


def sh(
    script: str, cwd: Path, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """``script`` run by bash in ``cwd`` with the installed ``ingester`` first on PATH;
    stdout and stderr together, as a terminal shows them."""
    assert (INGESTER_BIN / "ingester").exists(), "the ingester command is not installed"
    path = f"{INGESTER_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=cli_env(PATH=path, **env),
        check=False,
    )


def transcript(code: str) -> list[tuple[str, list[str]]]:
    """A ```console block's commands (``$ `` lines, ``\\`` continued) and the output shown."""
    steps: list[tuple[str, list[str]]] = []
    lines = code.splitlines()
    while lines:
        line = lines.pop(0)
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and lines:
                command += "\n" + lines.pop(0)
            steps.append((command, []))
        else:
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line)
    return steps


def _shape(line: str) -> str:
    line = re.sub(
        r"\d{4}-\d\d-\d\d(?:[T ]\d\d[:-]\d\d(?:[:-]\d\d(?:\.\d+|-\d{6}\b)?)?)?(?:-[0-9a-f]{8}\b)?"
        r"(?:Z|[+-]\d\d:\d\d)?",
        "<time>",
        line,
    )
    line = re.sub(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\b", "<day>", line)
    line = re.sub(r"\bjust now\b", "0 s ago", line)
    line = re.sub(
        r"\d+(?:\.\d+)? (?:s|min|h|days?)(?: \d+ (?:min|h))? (ago|old)\b", r"<n> \1", line
    )
    line = re.sub(r"\b[0-9a-f]{8,}\b", "<id>", line)
    line = re.sub(r"\d+(?:\.\d+)?", "<n>", line)
    return " ".join(line.split())


def shape_mismatch(shown: list[str], real: list[str]) -> str:
    """How the real output lines differ from the shown ones, up to times, ids, numbers and
    width (``...`` or ``…`` in a shown line stands for anything); empty when they agree."""
    if len(shown) != len(real):
        return f"{len(real)} line(s), the doc shows {len(shown)}"
    for want, got in zip(shown, real, strict=True):
        parts = re.split(r"\.\.\.|…", _shape(want))
        if not re.fullmatch(".*".join(re.escape(p) for p in parts), _shape(got)):
            return f"line {got!r} ({_shape(got)}), the doc shows {want!r} ({_shape(want)})"
    return ""


def run_transcript(
    name: str, cwd: Path, paths: dict[str, str | Path], *, as_user: str = "", **env: str
) -> list[tuple[int, str]]:
    """Run each command of the console example ``name`` (paths substituted) in ``cwd``;
    assert each output has the shape shown (a trailing ``# exit N`` comment is the exit
    code the doc claims, checked too); return (exit code, output) per command, with
    ``echo $?`` answered by the previous command's code."""
    results: list[tuple[int, str]] = []
    for command, shown in transcript(example(name)):
        if command == "echo $?":
            assert shown == [str(results[-1][0])], f"{name}: exit {results[-1][0]}, shown {shown}"
            continue
        claimed = [re.search(r"\s+# exit (\d+)$", s) for s in shown]
        shown = [s[: c.start()] if c else s for s, c in zip(shown, claimed, strict=True)]
        done = sh(as_user + substituted(command, paths), cwd, **env)
        output = done.stdout
        for doc_path in sorted(paths, key=lambda p: len(str(paths[p])), reverse=True):
            output = output.replace(str(paths[doc_path]), doc_path)
        real = output.splitlines()
        mismatch = shape_mismatch(shown, real)
        assert not mismatch, f"{name}: $ {command}: {mismatch}; output:\n{output}"
        for c in claimed:
            if c:
                assert done.returncode == int(c.group(1)), f"{name}: $ {command}: {output}"
        results.append((done.returncode, output))
    return results


def _versions(root: Path) -> list[Path]:
    return sorted((root / "console-usage-history").glob("2*.json"))


def test_the_readme_s_submit_blocks_drop_what_the_watcher_stores(tmp_path: Path) -> None:
    shutil.copy(FULL_SAMPLE, tmp_path / "snapshot.json")
    assert run_cli(tmp_path, "init").returncode == 0
    scraper = "scrape() { cat snapshot.json; }   # stands for the user's scraper\n"
    done = sh("set -e\n" + scraper + example("readme-submit"), tmp_path)
    assert done.returncode == 0, done.stdout
    printed = done.stdout.splitlines()
    drops = sorted(p for p in (tmp_path / "spool").glob("*.json"))
    assert len(drops) == 2 and sorted(printed[:2]) == [str(p) for p in drops], done.stdout
    assert printed[2:] == ["valid snapshot.json"], done.stdout
    fresh = sh("set -e\n" + example("readme-submit-fresh"), tmp_path)
    assert fresh.returncode == 0, fresh.stdout
    new = Path(fresh.stdout.strip())
    assert new.parent == tmp_path / "spool" and new.exists(), fresh.stdout
    fresh_at = json.loads(new.read_text())["lastUpdated"]
    assert fresh_at != "2026-11-27T14:05:00Z"
    assert run_cli(tmp_path, "watch", "--once").returncode == 0
    assert len(_versions(tmp_path)) == 3
    assert [v for v in _versions(tmp_path) if json.loads(v.read_text())["lastUpdated"] == fresh_at]


def test_the_backup_guide_s_snapshot_variables_and_restored_verify_run(tmp_path: Path) -> None:
    root = tmp_path / "var" / "lib" / "console-usage-ingester"
    backups = tmp_path / "var" / "backups" / "console-usage"
    paths: dict[str, str | Path] = {
        "/var/lib/console-usage-ingester": root,
        "/var/backups/console-usage": backups,
    }
    root.mkdir(parents=True)
    backups.mkdir(parents=True)
    assert run_cli(root, "init").returncode == 0
    assert run_cli(root, "ingest", *map(str, VALID_SAMPLES)).returncode == 0
    snapshot = backups / "snapshot"
    done = sh("set -e\n" + substituted(example("backup-snapshot"), paths), tmp_path)
    assert done.returncode == 0, done.stdout
    assert [p.name for p in _versions(snapshot)] == [p.name for p in _versions(root)]
    assert (snapshot / "console-usage-synced.json").resolve().parent == (
        snapshot / "console-usage-history"
    )
    # The variables the recipes read, then a recipe's snapshot line: on the same
    # filesystem as ROOT, the snapshot's versions are hard links.
    shutil.rmtree(snapshot)
    recipe_line = 'ingester --root "$ROOT" snapshot "$SNAP"'
    assert recipe_line in (REPO / "docs" / "backup.md").read_text()
    variables = substituted(example("backup-variables"), paths)
    assert sh(f"set -e\n{variables}\n{recipe_line}", tmp_path).returncode == 0
    first = _versions(snapshot)[0]
    assert first.stat().st_ino == (root / "console-usage-history" / first.name).stat().st_ino
    # A restored tree is checked by verify alone.
    run_transcript(
        "backup-verify-restored", tmp_path, {"/restore": snapshot}, RESTORE=str(snapshot)
    )


# The host's tools the restore block calls, standing in where a test machine has no booted
# systemd and no service user: each call is written to $CALLS, and runuser runs the command
# as this user.
_HOST_TOOLS = """\
systemctl() { echo "systemctl $*" >> "$CALLS"; }
systemd-tmpfiles() { echo "systemd-tmpfiles $*" >> "$CALLS"; }
setfacl() { echo "setfacl $*" >> "$CALLS"; }
chown() { :; }
runuser() { shift 3; "$@"; }
"""


def test_the_backup_guide_s_restore_into_the_service_runs(tmp_path: Path) -> None:
    """Beside a watcher that the units it stops do not run, the restore block moves
    nothing, names the watcher and starts nothing; with the watcher stopped it restores
    and starts what it stopped; on a fresh root it restores without a word about what
    is not there, and applies the read-only group's ACLs where that group is set up."""
    backed_up = tmp_path / "backed-up"
    backed_up.mkdir()
    assert run_cli(backed_up, "init").returncode == 0
    assert run_cli(backed_up, "ingest", *map(str, VALID_SAMPLES)).returncode == 0
    restore = tmp_path / "restore"
    assert run_cli(backed_up, "snapshot", str(restore)).returncode == 0
    restored = [p.name for p in _versions(restore)]
    readers = tmp_path / "etc" / "tmpfiles.d" / "console-usage-ingester-readers.conf"
    calls = tmp_path / "calls"

    def restore_into(root: Path) -> tuple[str, list[str]]:
        calls.write_text("")
        block = substituted(
            example("backup-restore-into-the-service"),
            {
                "/var/lib/console-usage-ingester": root,
                "/etc/tmpfiles.d/console-usage-ingester-readers.conf": readers,
            },
        )
        done = sh(_HOST_TOOLS + block, tmp_path, RESTORE=str(restore), CALLS=str(calls))
        return done.stdout, calls.read_text().splitlines()

    live = tmp_path / "var" / "lib" / "console-usage-ingester"
    live.mkdir(parents=True)
    assert run_cli(live, "init").returncode == 0
    (tmp_path / "live.json").write_text(_fresh_snapshot())
    assert run_cli(live, "ingest", str(tmp_path / "live.json")).returncode == 0
    before = [p.name for p in _versions(live)]
    with WatchProcess(live):  # as in a unit that UNITS does not name
        output, called = restore_into(live)
        assert re.search(r"^watcher +running \(pid \d+, watch\)$", output, re.M), output
        assert "error: the history is in use" in output, output
        assert called == ["systemctl stop console-usage-ingester"], called
        assert not list(live.glob("*.before-restore")), output
        assert [p.name for p in _versions(live)] == before

    output, called = restore_into(live)
    assert "error" not in output, output
    assert called == [
        "systemctl stop console-usage-ingester",
        "systemctl start console-usage-ingester",
    ], called
    assert [p.name for p in _versions(live)] == restored
    assert (
        sorted(p.name for p in (live / "console-usage-history.before-restore").glob("2*")) == before
    )
    assert (live / "console-usage-synced.json").resolve().name == restored[-1]
    assert run_cli(live, "verify").returncode == 0

    fresh = tmp_path / "fresh"
    (fresh / "spool").mkdir(parents=True)  # what the install's tmpfiles snippet makes
    readers.parent.mkdir(parents=True)
    readers.write_text("")
    output, called = restore_into(fresh)
    assert "cannot stat" not in output and "error" not in output, output
    assert called == [
        "systemctl stop console-usage-ingester",
        f"systemd-tmpfiles --create {readers}",
        "setfacl -R -m g:console-usage-readers:rX console-usage-history",
        "systemctl start console-usage-ingester",
    ], called
    assert [p.name for p in _versions(fresh)] == restored
    assert not list(fresh.glob("*.before-restore"))
    assert run_cli(fresh, "verify").returncode == 0


def test_the_scraper_guide_s_blocks_run(tmp_path: Path) -> None:
    done = sh("set -e\n" + example("scraper-schema"), tmp_path)
    assert done.returncode == 0, done.stdout
    assert (tmp_path / "payload.schema.json").read_text() == (
        REPO / "docs" / "payload.schema.json"
    ).read_text()
    scraper = "scrape() { cat {sample}; }   # stands for the user's scraper\n"
    for sample, code, said in [(FULL_SAMPLE, 0, "valid snapshot.json"), (INVALID, 1, "")]:
        done = sh(
            scraper.replace("{sample}", shlex.quote(str(sample))) + example("scraper-ci"), tmp_path
        )
        assert done.returncode == code, done.stdout
        assert said in done.stdout
    assert not (tmp_path / "spool").exists() or not list((tmp_path / "spool").glob("*.json"))


def test_the_service_guide_s_read_commands_run(tmp_path: Path) -> None:
    root = tmp_path / "var" / "lib" / "console-usage-ingester"
    root.mkdir(parents=True)
    assert run_cli(root, "init").returncode == 0
    assert run_cli(root, "ingest", *map(str, VALID_SAMPLES)).returncode == 0
    block = substituted(example("service-read-commands"), {"/var/lib/console-usage-ingester": root})
    done = sh("set -e\n" + block, tmp_path)
    assert done.returncode == 0, done.stdout
    newest = (root / "console-usage-synced.json").read_text()
    assert "watcher      not running" in done.stdout and done.stdout.endswith(newest)


def _fresh_snapshot(**fields: object) -> str:
    """The full sample on one line, ``lastUpdated`` now (and ``fields`` over it)."""
    body = json.loads(FULL_SAMPLE.read_text())
    body["lastUpdated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body.update(fields)
    return json.dumps(body)


def ingest_in_order(root: Path, *sources: Path) -> None:
    """Ingest ``sources`` one per clock second, so that their version names (to the second,
    then a hash) sort in this order."""
    for source in sources:
        second = int(time.time())
        assert run_cli(root, "ingest", str(source)).returncode == 0
        wait_for(lambda s=second: int(time.time()) > s, 5, "the next second")


def test_the_operations_guide_s_transcripts_run(tmp_path: Path) -> None:
    """One history through the guide: errors before it exists, status, list, show, a
    damaged version in list and verify, the repair, and the refusal beside a watcher."""
    usage = tmp_path / "srv" / "usage"
    paths: dict[str, str | Path] = {"/srv/usage": usage, "/srv/nowhere": tmp_path / "nowhere"}
    usage.mkdir(parents=True)
    run_transcript("operations-errors", tmp_path, paths)

    assert run_cli(usage, "init").returncode == 0
    (usage / "spool" / "bad.json").write_text(INVALID.read_text())
    assert run_cli(usage, "watch", "--once").returncode == 0  # one rejected drop
    fresh = tmp_path / "fresh.json"
    fresh.write_text(_fresh_snapshot())
    partial = REPO / "tests" / "samples" / "valid" / "partial-with-errors.json"
    ingest_in_order(usage, FULL_SAMPLE, partial, fresh)
    full_version, _, _ = (p.stem for p in _versions(usage))
    (usage / "spool" / "waiting.json").write_text(FULL_SAMPLE.read_text())
    # The doc's machine is in Berlin: the default console time zone is the machine's.
    run_transcript("operations-status", tmp_path, paths, TZ="Europe/Berlin")
    run_transcript("operations-list", tmp_path, paths)

    # show: the doc's names and times are its own history's; here, this one's.
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    show_paths = {
        **paths,
        "2026-11-29T04-52-58-11176202": full_version,
        "2026-11-29T05:00:00Z": soon,
    }
    run_transcript("operations-show", tmp_path, show_paths)
    assert (tmp_path / "snapshot.json").read_bytes() == (
        usage / "console-usage-synced.json"
    ).read_bytes()
    run_transcript("operations-show-errors", tmp_path, paths)

    # Damage: a version that is not JSON, a leftover temp file, metadata a version short.
    history = usage / "console-usage-history"
    damaged = _versions(usage)[1]
    damaged.chmod(0o644)
    damaged.write_text('{"currentSession": {"a": 1}\n"x": 1}')
    damaged.chmod(0o444)
    run_transcript("operations-list-damaged", tmp_path, paths)
    (history / ".tmp-w-5f0c2a9e1b7d").write_text("{")
    metadata = json.loads((history / "_metadata.json").read_text())
    metadata["versionCount"] = 2
    (history / "_metadata.json").write_text(json.dumps(metadata))
    [(code, _)] = run_transcript("operations-verify", tmp_path, paths)
    assert code == 1
    [(code, _)] = run_transcript("operations-verify-repair", tmp_path, paths)
    assert code == 1 and not (history / ".tmp-w-5f0c2a9e1b7d").exists()
    with WatchProcess(usage):
        [(code, output)] = run_transcript("operations-verify-locked", tmp_path, paths)
    assert code == 1, output


def test_the_operations_guide_s_ingest_and_cleanup_transcripts_run(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "init").returncode == 0
    shutil.copy(FULL_SAMPLE, tmp_path / "snapshot.json")
    shutil.copy(INVALID, tmp_path / "bad.json")
    run_transcript("operations-ingest", tmp_path, {})
    assert len(_versions(tmp_path)) == 1
    # One rejected drop, and a version from long ago for retention to expire.
    (tmp_path / "spool" / "bad.json").write_text(INVALID.read_text())
    assert run_cli(tmp_path, "watch", "--once").returncode == 0
    old = tmp_path / "console-usage-history" / "2026-11-20T08-00-00-00000000.json"
    shutil.copy(FULL_SAMPLE, old)
    old.chmod(0o444)
    run_transcript("operations-cleanup", tmp_path, {})
    assert not old.exists() and len(_versions(tmp_path)) == 1


def test_the_migrating_guide_s_transcripts_and_going_back_run(tmp_path: Path) -> None:
    from test_adopt import original_history

    copy = tmp_path / "copy" / "claude-scraper"
    original_history(copy)
    # The original stamps both ends with its clock's milliseconds, which names drop.
    meta_path = copy / "console-usage-history" / "_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["oldestTimestamp"] = meta["oldestTimestamp"].replace(".000Z", ".412Z")
    meta_path.write_text(json.dumps(meta, indent=2))
    paths: dict[str, str | Path] = {"/tmp/tmp.x3Yk0qGm2f/claude-scraper": copy}
    run_transcript("migrating-try-it-output", tmp_path, paths, COPY=str(copy))
    assert (copy / "console-usage-synced.json").is_symlink()

    nest = tmp_path / "nest"
    original_history(nest / "claude-scraper")
    [(code, _)] = run_transcript("migrating-nested", tmp_path, {"/tmp/nest": nest})
    assert code == 1 and not (nest / "console-usage-history").exists()

    # Going back: the latest a plain copy of the newest version, which stays as it was.
    latest = copy / "console-usage-synced.json"
    newest = latest.resolve()
    before = newest.read_bytes()
    block = substituted(example("migrating-back"), {"/var/lib/console-usage-ingester": copy})
    done = sh("set -e\n" + block, tmp_path)
    assert done.returncode == 0, done.stdout
    assert not latest.is_symlink() and latest.read_bytes() == before == newest.read_bytes()
    # The original writes it in place: its owner may (the version stays read-only).
    assert latest.stat().st_mode & 0o200 and not newest.stat().st_mode & 0o222


@contextlib.contextmanager
def in_background(script: str, cwd: Path, **env: str) -> Iterator[subprocess.Popen[str]]:
    """A block that runs until stopped (a server), run by bash in its own process group;
    SIGTERM to the group when done, as Ctrl-C would, and it must exit 0."""
    path = f"{INGESTER_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    log = cwd / f"background-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=cli_env(PATH=path, **env),
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log.read_text()
    assert "Traceback" not in text, text


def _http(
    method: str, url: str, key: str = "", body: bytes | None = None
) -> tuple[int, dict[str, object]]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method)
    if key:
        request.add_header("X-API-Key", key)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


def _answers(url: str) -> bool:
    return _http("GET", url)[0] != 0


def _watched(health: str) -> bool:
    """Whether the server answering ``health`` sees a watcher that takes its spool."""
    watcher = _http("GET", health)[1].get("watcher")
    return isinstance(watcher, dict) and watcher.get("running") is True


def test_the_serve_guide_s_blocks_serve_and_store(tmp_path: Path) -> None:
    """One process, then beside a watcher with the guide's two curl calls, then with a
    trigger command: each serves the original's endpoints and stores what is POSTed."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    key = "a-test-key-only"
    (home / ".config" / "ingester-key").write_text(key + "\n")
    snapshot = _fresh_snapshot().encode()

    one = tmp_path / "one"
    one.mkdir()
    port = free_port()
    block = _as_here(example("serve-one-process")).replace("4000", str(port))
    with in_background(block, one, HOME=str(home)):
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{base}/api/health"), 60, "serve --watch to listen")
        status, answer = _http("POST", f"{base}/api/claude/console-usage", key, snapshot)
        assert status == 202 and answer["success"] is True, answer
        wait_for(lambda: _versions(one), 30, "the POSTed snapshot stored")

    beside = tmp_path / "beside"
    beside.mkdir()
    assert run_cli(beside, "init").returncode == 0
    fresh = tmp_path / "fresh.json"
    fresh.write_bytes(snapshot)
    assert run_cli(beside, "ingest", str(fresh)).returncode == 0
    (beside / "snapshot.json").write_bytes(snapshot)
    port = free_port()
    block = _as_here(example("serve-beside-watcher")).replace("8080", str(port))
    with in_background(block, beside, HOME=str(home)):
        health = f"http://127.0.0.1:{port}/api/health"
        wait_for(lambda: _answers(health), 60, "serve to listen")
        # The block starts the watcher and serve side by side: serve may answer before
        # the watcher holds the locks, and the POST shown is answered "the watcher
        # stores it" only once serve sees one.
        wait_for(lambda: _watched(health), 60, "serve to see the watcher")
        address = {"127.0.0.1:8080": f"127.0.0.1:{port}"}
        run_transcript("serve-curl", beside, address, KEY=key)
        wait_for(lambda: len(_versions(beside)) == 2, 30, "the watcher storing the POST")

    # The trigger runs the scraper's command (here a script that submits a snapshot).
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    scraper = tmp_path / "opt" / "scraper" / "bin" / "scrape"
    scraper.parent.mkdir(parents=True)
    scraper.write_text(
        f"#!/bin/sh\necho scraped\ncat {shlex.quote(str(fresh))} | ingester submit -\n"
    )
    scraper.chmod(0o755)
    port = free_port()
    block = substituted(example("serve-trigger"), {"/opt/scraper/bin/scrape": scraper})
    with in_background(block, trigger, PORT=str(port), CLAUDE_SYNC_API_KEY=key):
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{base}/api/health"), 60, "serve --watch to listen")
        status, answer = _http("POST", f"{base}/api/claude/console-usage/trigger", key)
        assert status == 200 and answer["success"] is True, answer
        wait_for(lambda: _versions(trigger), 30, "the triggered scrape stored")


def _utc(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def test_the_check_and_forecast_transcripts_run(tmp_path: Path) -> None:
    """A history whose weekly limit runs out before its reset, the session's not: check
    warns with the forecast, and the forecast table says the same."""
    root = tmp_path / "var" / "lib" / "console-usage-ingester"
    root.mkdir(parents=True)
    paths: dict[str, str | Path] = {"/var/lib/console-usage-ingester": root}
    assert run_cli(root, "init").returncode == 0
    # The weekly reset three days ahead, whatever today is: the limit runs out first.
    weekly_reset = time.strftime("%a 8:59 AM", time.gmtime(time.time() + 3 * 86400))
    sources = []
    for hours_ago, session, weekly, resets in [(2, 31, 62.8, 3), (1, 38, 64, 2), (0, 45, 65.2, 1)]:
        body = {
            "currentSession": {"resetsIn": f"{resets} hr 15 min", "percentageUsed": session},
            "weeklyLimits": {
                "allModels": {"resetsIn": weekly_reset, "percentageUsed": weekly},
                "sonnetOnly": {"resetsIn": weekly_reset, "percentageUsed": 7},
            },
            "lastUpdated": _utc(hours_ago * 3600 + 120),
        }
        sources.append(tmp_path / f"{hours_ago}.json")
        sources[-1].write_text(json.dumps(body))
    ingest_in_order(root, *sources)
    [(code, _)] = run_transcript("monitoring-check-ok", tmp_path, paths)
    assert code == 0
    [(code, _)] = run_transcript("monitoring-check-forecast", tmp_path, paths)
    assert code == 1  # WARNING
    [(code, _)] = run_transcript("operations-forecast", root, paths)
    assert code == 0


def test_every_key_check_json_prints_is_in_the_monitoring_table(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_cli(root, "init").returncode == 0
    done = run_cli(root, "check", "--json")
    keys = list(json.loads(done.stdout))
    table = (REPO / "docs" / "monitoring.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    missing = [key for key in keys if not any(f"`{key}`" in row.split(" | ")[0] for row in rows)]
    assert missing == [], f"docs/monitoring.md's check --json table lacks {missing}"


def test_the_check_transcript_as_a_user_outside_the_groups_runs() -> None:
    # Root, setpriv, and an interpreter that uid can run (not one under a home folder
    # closed to others, as pyenv's under /root): else this skips, saying which.
    reason = other_user_problem()
    if reason:
        pytest.skip(reason)
    # pytest's own temporary folders are closed to other users: this one is open down
    # to the state folder, as /var/lib is.
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o755)
        root = Path(top) / "var" / "lib" / "console-usage-ingester"
        root.mkdir(parents=True)
        for folder in (root.parent.parent, root.parent):
            folder.chmod(0o755)
        assert run_cli(root, "init").returncode == 0
        root.chmod(0o750)  # the service's state folder
        other = "setpriv --reuid=4242 --regid=4242 --clear-groups "  # in neither group
        paths: dict[str, str | Path] = {"/var/lib/console-usage-ingester": root}
        [(code, _)] = run_transcript("monitoring-check-eacces", Path(top), paths, as_user=other)
    assert code == 2


def test_the_export_transcript_runs(tmp_path: Path) -> None:
    usage = tmp_path / "srv" / "usage"
    usage.mkdir(parents=True)
    assert run_cli(usage, "init").returncode == 0
    assert run_cli(usage, "ingest", *map(str, VALID_SAMPLES)).returncode == 0
    run_transcript("page-export", usage, {"/srv/usage": usage})
    rows = (usage / "usage.csv").read_text().splitlines()
    assert rows[0].startswith("ingestedAt,lastUpdated,") and len(rows) == 1 + len(VALID_SAMPLES)


def test_each_documented_watch_line_stores_a_drop(tmp_path: Path) -> None:
    """Each line of the block is one way to run the watcher: the ones that run until
    stopped take a drop while they run, ``--once`` takes the backlog and exits 0."""
    usage = tmp_path / "srv" / "usage"
    usage.mkdir(parents=True)
    lines = [line.split("#")[0].strip() for line in example("operations-watch").splitlines()]
    assert len(lines) == 4
    for n, line in enumerate(lines):
        root = usage if "--root /srv/usage" in line else tmp_path
        command = substituted(line, {"/srv/usage": usage})
        assert run_cli(root, "init").returncode == 0
        before = len(_versions(root))
        if "--once" in line:
            (root / "spool" / f"{n}.json").write_text(_fresh_snapshot())
            done = sh(command, tmp_path)
            assert done.returncode == 0, done.stdout
        else:
            with in_background(command, tmp_path) as process:
                (root / "spool" / f"{n}.json").write_text(_fresh_snapshot())
                stored = lambda r=root, b=before: len(_versions(r)) > b  # noqa: E731
                wait_for(stored, 60, f"{line} storing")
                assert process.poll() is None, line
        assert len(_versions(root)) == before + 1, line


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("rsync", "restic", "borg", "tar")),
    reason="rsync, restic, borg and tar are needed (.ci/run installs them with apt-get)",
)
def test_the_live_copy_excludes_leave_out_what_they_name(tmp_path: Path) -> None:
    """Each tool's line copies the live root beside a running watcher, without the temp
    files, the lock and the spool."""
    root = tmp_path / "root"
    root.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "restic-password").write_text("test only")
    env = {
        "ROOT": str(root),
        "DEST": str(tmp_path / "dest"),
        "ARCHIVE": str(tmp_path / "live.tar.gz"),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "RESTIC_REPOSITORY": str(tmp_path / "restic-repo"),
        "RESTIC_PASSWORD_FILE": str(home / "restic-password"),
        "BORG_REPO": str(tmp_path / "borg-repo"),
        "BORG_PASSPHRASE": "test only",
        "BORG_BASE_DIR": str(home),
    }
    setup = sh("set -e; restic init -q; borg init --encryption=repokey-blake2", tmp_path, **env)
    assert setup.returncode == 0, setup.stdout
    assert run_cli(root, "init").returncode == 0
    assert run_cli(root, "ingest", *map(str, VALID_SAMPLES)).returncode == 0
    with WatchProcess(root):
        (root / "console-usage-history" / ".tmp-w-5f0c2a9e1b7d").write_text("{")
        (root / "spool" / "tmp" / "in-flight.json").write_text("{")
        assert (root / "console-usage-history" / ".lock").exists()
        done = sh("set -e\n" + example("backup-live-excludes"), tmp_path, **env)
        assert done.returncode == 0, done.stdout
    copies = {
        "rsync": sh('cd "$DEST" && find . -mindepth 1', tmp_path, **env),
        "restic": sh("restic ls --quiet latest", tmp_path, **env),
        "borg": sh("borg list --short ::$(borg list --short --last 1)", tmp_path, **env),
        "tar": sh('tar -tzf "$ARCHIVE"', tmp_path, **env),
    }
    versions = [p.name for p in _versions(root)]
    for tool, listing in copies.items():
        assert listing.returncode == 0, f"{tool}: {listing.stdout}"
        names = listing.stdout.split()
        for version in versions:
            assert any(n.endswith(f"console-usage-history/{version}") for n in names), tool
        assert any(n.endswith("console-usage-synced.json") for n in names), tool
        for left_out in (".tmp-", "/.lock", "spool"):
            assert not [n for n in names if left_out in n], f"{tool} copied {left_out}: {names}"


def test_the_check_transcript_of_a_mirror_behind_runs(tmp_path: Path) -> None:
    """A mirror running against a store it cannot reach, 9 versions waiting, the oldest
    ingested 41 min ago: check says CRITICAL with the mirror's state."""
    pytest.importorskip("boto3")
    root = tmp_path / "var" / "lib" / "console-usage-ingester"
    root.mkdir(parents=True)
    assert run_cli(root, "init").returncode == 0
    history = root / "console-usage-history"
    for minutes in range(41, 33, -1):  # versions stored 41 to 34 min ago
        stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime(time.time() - minutes * 60))
        old = history / f"{stamp}-{minutes:08x}.json"
        old.write_text(_fresh_snapshot(lastUpdated=_utc(minutes * 60)))
        old.chmod(0o444)
    fresh = tmp_path / "fresh.json"
    fresh.write_text(_fresh_snapshot(lastUpdated=_utc(62)))
    assert run_cli(root, "ingest", str(fresh)).returncode == 0
    assert run_cli(root, "verify", "--repair").returncode == 0
    store = {  # an object store nothing listens for
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config-none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials-none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    mirror = f"ingester --root {shlex.quote(str(root))} mirror s3://my-bucket/usage/prod"
    with in_background(mirror, tmp_path, **store):
        state = history / "_mirror.json"
        wait_for(lambda: state.exists() and "unreachable" in state.read_text(), 120, "state")
        paths: dict[str, str | Path] = {"/var/lib/console-usage-ingester": root}
        [(code, _)] = run_transcript("monitoring-check-mirror", tmp_path, paths)
    assert code == 2


def test_the_single_test_commands_in_the_testing_guide_name_tests_that_exist() -> None:
    """Those commands run parts of this suite, so they are not run from inside it; what
    they name must exist."""
    text = (REPO / "docs" / "testing.md").read_text()
    block = text.split(".venv/bin/python -m pytest tests/test_watcher.py -q", 1)
    assert len(block) == 2, "docs/testing.md no longer shows how to run one file"
    commands = ".venv/bin/python -m pytest tests/test_watcher.py -q" + block[1].split("```")[0]
    named = re.findall(r"(tests/\w+\.py)(?:::(\w+))?", commands)
    assert named
    for path, test in named:
        assert (REPO / path).exists(), f"docs/testing.md names {path}, which does not exist"
        if test:
            assert f"def {test}(" in (REPO / path).read_text(), f"{path} has no {test}"


def test_the_mirror_guide_s_read_from_the_object_store_block_runs(
    tmp_path: Path,
    s3: Any,  # noqa: F811
    bucket: str,  # noqa: F811
    aws_files: dict[str, str],  # noqa: F811
) -> None:
    """The ``--from s3://`` commands of mirror.md, run as written against a bucket the
    real mirror filled (a real SeaweedFS), from a folder with no history."""
    from support.serveproc import fresh_payload
    from test_mirror import make_store, s3_env

    source = tmp_path / "source"
    store = make_store(source)
    for i in range(3):
        store.save_version(fresh_payload(seq=i))
    target = f"s3://{bucket}/usage/prod"
    env = s3_env(s3.endpoint, aws_files)
    mirrored = run_cli(source, "mirror", target, "--once", **env)
    assert mirrored.returncode == 0, mirrored.stderr
    block = example("mirror-read-from")
    assert block.count("--from s3://my-bucket/usage/prod") == 4
    script = block.replace("s3://my-bucket/usage/prod", target).replace(
        "ingester ", f"{sys.executable} -m ingester "
    )
    reader = tmp_path / "reader"
    reader.mkdir()
    done = subprocess.run(
        ["bash", "-c", "set -e\n" + script],
        cwd=reader,
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")}, **env},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "INGESTER OK" in done.stdout, done.stdout
    history = source / "console-usage-history"
    newest = sorted(history.glob("20*.json"))[-1]
    assert (reader / "latest.json").read_bytes() == newest.read_bytes()
    assert len((reader / "usage.csv").read_text().splitlines()) == 1 + 3
    assert sorted(p.name for p in reader.iterdir()) == ["latest.json", "usage.csv"]
