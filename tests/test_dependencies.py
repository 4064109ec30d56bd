"""The dependency policy (docs/testing.md, "Dependencies and their new releases").

``pyproject.toml`` gives users ranges with an upper bound; ``constraints.txt`` locks what
CI installs. watchdog is the one dependency whose undocumented parts we use (its inotify
bindings and constants, in ``ingester/intake/arrivals.py``), and its inotify module changed
within 7.x: so the tests that pin down what we use, and ``mypy --strict`` on the modules
that import it, run here against the lowest watchdog the range allows and the locked
one, each installed into a folder of its own (``pip install --target``) and put first on
``PYTHONPATH`` of a subprocess. The version
the suite itself runs with is proven by the suite; ``.ci/run --newest`` makes that the
newest allowed.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tomllib
from functools import cache
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The modules that import watchdog: mypy checks them (and what they import) under each
# watchdog; a test below keeps the list whole.
WATCHDOG_IMPORTERS = ["ingester.intake.arrivals"]
# The tests that fail if watchdog's bindings or observer do something else than we rely on.
WATCHDOG_FACING_TESTS = [
    "tests/test_arrivals.py",
    "tests/test_watcher.py::test_inotify_overflow_triggers_a_rescan",
]


def _normal(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?(.*)")


def _split(requirement: str) -> tuple[str, str]:
    """``"name[extra]>=1,<2"`` -> ``("name", ">=1,<2")``."""
    found = _REQUIREMENT.fullmatch(requirement)
    assert found, f"pyproject.toml: cannot read the requirement {requirement!r}"
    return _normal(found[1]), found[2].replace(" ", "")


@cache
def _project() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as handle:
        project: dict[str, object] = tomllib.load(handle)["project"]
    return project


def _requirements(*groups: str) -> dict[str, str]:
    """name -> version specifier of the runtime dependencies and of the extras ``groups``."""
    listed = list(_project()["dependencies"])  # type: ignore[call-overload]
    extras: dict[str, list[str]] = _project()["optional-dependencies"]  # type: ignore[assignment]
    for group in groups:
        listed += extras[group]
    own = _normal(str(_project()["name"]))
    return {name: spec for name, spec in map(_split, listed) if name != own}


@cache
def _locked() -> dict[str, str]:
    """name -> version pinned in constraints.txt."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: not an exact pin: {line}"
            pins[_normal(name)] = pinned.strip()
    return pins


def _watchdog_versions() -> list[str]:
    floor = re.search(r">=([\d.]+)", _requirements()["watchdog"])
    assert floor, "pyproject.toml gives watchdog no lower bound"
    return sorted({floor.group(1), _locked()["watchdog"]})


def test_what_users_get_has_an_upper_bound() -> None:
    """A new major release reaches users only once we raised the bound (and tested it)."""
    unbounded = [f"{n}{s}" for n, s in _requirements("s3").items() if "<" not in s]
    assert not unbounded, f"give these an upper bound in pyproject.toml: {unbounded}"


def test_the_lock_pins_every_requirement_inside_its_range() -> None:
    locked = _locked()
    missing = sorted(set(_requirements("s3", "test")) - set(locked))
    assert not missing, f"constraints.txt does not pin: {missing} (see docs/testing.md)"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("wanted", _watchdog_versions())
def test_watchdog_facing_tests_and_types_pass_under(wanted: str, tmp_path: Path) -> None:
    if wanted == version("watchdog"):
        pytest.skip(f"watchdog {wanted} is the one installed: the whole suite runs against it")
    target = tmp_path / f"watchdog-{wanted}"
    install = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"),
            *("--no-deps", "--only-binary", ":all:", "--target", str(target)),
            f"watchdog=={wanted}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, f"cannot install watchdog {wanted}: {install.stderr}"
    path = [str(target), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}

    # Each run is a context manager: its pipe is closed, and it is killed and waited
    # for, however the test ends (a timeout: the other run would go on after it).
    running = contextlib.ExitStack()

    def start(*args: str) -> subprocess.Popen[str]:
        run = running.enter_context(
            subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        )
        running.callback(run.kill)  # before the wait: nothing if it has ended
        return run

    with running:
        loaded = start(
            "-c", "import watchdog.version as v, sys; sys.stdout.write(v.VERSION_STRING)"
        )
        assert loaded.communicate(timeout=300)[0] == wanted
        # Both at once: they are independent, and this test is among the suite's longest.
        # mypy checks the modules that import watchdog (and what they import).
        runs = [
            start("-m", "pytest", "-q", "-p", "no:cacheprovider", *WATCHDOG_FACING_TESTS),
            start(
                *("-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "mypy")),
                *(arg for module in WATCHDOG_IMPORTERS for arg in ("-m", module)),
            ),
        ]
        outputs = [run.communicate(timeout=300)[0] for run in runs]
    failed = [
        f"{' '.join(map(str, run.args[1:]))}\n{output}"
        for run, output in zip(runs, outputs, strict=True)
        if run.returncode != 0
    ]
    assert not failed, f"under watchdog {wanted}:\n" + "\n".join(failed)


def test_the_modules_mypy_checks_under_each_watchdog_are_all_that_import_it() -> None:
    importers = {
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in (REPO / "ingester").rglob("*.py")
        if re.search(r"^\s*(from|import) watchdog\b", path.read_text(), re.MULTILINE)
    }
    assert importers == set(WATCHDOG_IMPORTERS)
