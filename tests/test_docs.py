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
polars recipe on a real export, the scraper's drop function with a real watcher).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from support import run_cli
from test_mirror import aws_files, bucket, s3  # noqa: F401 - fixtures

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
    """The function drops a valid payload durably into a spool the watcher takes it from."""
    assert run_cli(tmp_path, "init").returncode == 0
    snapshot = json.loads(FULL_SAMPLE.read_text())
    run_python(code, tmp_path, after=f"drop({snapshot!r})")
    drops = [p for p in (tmp_path / "spool").iterdir() if p.suffix == ".json"]
    assert len(drops) == 1 and json.loads(drops[0].read_text()) == snapshot
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
    assert run_cli(tmp_path, "watch", "--once").returncode == 0
    assert len(list((tmp_path / "console-usage-history").glob("2*.json"))) == 1


EXAMPLE_RUNS = {
    "python-api": example_python_api,
    "polars-read-back": example_polars_read_back,
    "scraper-drop": example_scraper_drop,
}
# Examples that need a server a module of their own starts: name -> (test file, test).
EXAMPLES_RUN_ELSEWHERE = {
    "aws-browse": ("tests/test_mirror.py", "test_the_documented_aws_cli_look_at_the_bucket"),
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
    sources = "".join(p.read_text() for p in (REPO / "ingester").glob("cli*.py"))
    writers = set(re.findall(r"writing_store\(\w+, \"([\w -]+)\"\)", sources))
    assert writers, "no command takes the history lock through writing_store"
    readme = " ".join((REPO / "README.md").read_text().split())
    sentence = re.search(r"The commands that write, ([^.]*) refuse", readme)
    assert sentence, "the README does not say which commands refuse while a watcher runs"
    assert {w for w in writers if f"`{w}`" not in sentence.group(1)} == set()


def _section_block(doc: Path, heading: str, index: int = 0) -> str:
    """The ``index``-th ``sh`` block of the section under ``heading``."""
    text = doc.read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    blocks = shell_blocks(section)
    assert len(blocks) > index, f"{doc.name}: no sh block {index} under {heading!r}"
    return blocks[index]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
    block = _section_block(REPO / "README.md", "## Replacing the original server")
    assert "PORT=4000 CLAUDE_SYNC_API_KEY=" in block and "serve --watch" in block
    port = _free_port()
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
    block = _section_block(REPO / "docs" / "migrating.md", "## Try it on a copy")
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
    block = _section_block(REPO / "docs" / "migrating.md", "## On the server", 1)
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
    # And the next step of the guide adopts what was copied.
    adopted = run_cli(root, "adopt")
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr


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
    block = _section_block(
        REPO / "docs" / "mirror.md", "## Reading the object store from the command line"
    )
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
