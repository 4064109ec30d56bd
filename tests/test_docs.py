"""The documentation against the repository and the real CLI.

Every relative link in README.md, docs/ and spool/README.md names a file that exists
(and a heading that exists, where it names one); the README's two newcomer commands are
the ones a user types, the test one being exactly what CI runs; the commands, options and
environment variables the README and the operations guide list are the ones
``ingester --help`` shows; every option any command's ``--help`` lists is documented, and
the operations guide gives each command a section with all of its options; the quoted
``status`` output shows the settings a real run prints; the README names every command
that refuses while a watcher runs; the Python API example runs as written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from support import run_cli

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", REPO / "spool" / "README.md", *(REPO / "docs").glob("*.md")])
FULL_SAMPLE = REPO / "tests" / "samples" / "valid" / "full.json"

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


def test_the_python_api_example_runs(tmp_path: Path) -> None:
    text = (REPO / "docs" / "python-api.md").read_text()
    example = re.search(r"<!-- example: python-api -->\n```python\n(.*?)```", text, re.S)
    assert example, "docs/python-api.md has no example marked <!-- example: python-api -->"
    shutil.copy(FULL_SAMPLE, tmp_path / "snapshot.json")
    result = subprocess.run(
        [sys.executable, "-c", example.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    versions = list((tmp_path / "console-usage-history").glob("2*.json"))
    assert len(versions) == 1
    assert versions[0].read_bytes() == FULL_SAMPLE.read_bytes()
    assert (tmp_path / "console-usage-synced.json").resolve() == versions[0].resolve()


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
    sources = "".join(p.read_text() for p in (REPO / "ingester").glob("cli*.py"))
    writers = set(re.findall(r"writing_store\(\w+, \"([\w -]+)\"\)", sources))
    assert writers, "no command takes the history lock through writing_store"
    readme = " ".join((REPO / "README.md").read_text().split())
    sentence = re.search(r"The commands that write, ([^.]*) refuse", readme)
    assert sentence, "the README does not say which commands refuse while a watcher runs"
    assert {w for w in writers if f"`{w}`" not in sentence.group(1)} == set()
