"""The package's layering, read from its imports: the drawing in ``docs/design.md`` stays true.

Each module belongs to a room (a subpackage, or one of the few top-level modules), and a
room may import only the rooms below it (``ALLOWED``). Every import counts, a lazy one
inside a function too, and ``if TYPE_CHECKING:`` ones as well: a name a room may not
import at run time is a dependency all the same. Besides the floors:

* the HTTP face and remote storage read the history only through its read interface;
* the command line reaches nothing private (no ``_name``) of another module;
* no module imports one that imports it back at run time, however long the loop (an
  import for type checking only may point back: a type names its user's class);
* every room's ``__init__`` says what it owns and what it may import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ingester

PACKAGE = Path(ingester.__file__).parent

# The top-level modules each form a room of their own; the rest are subpackages.
TOP_ROOMS = {
    "ingester.errors": "foundation",
    "ingester.clock": "foundation",
    "ingester.threads": "foundation",
    "ingester.json_text": "foundation",
    "ingester.settings": "settings",
    "ingester": "api",
    "ingester.__main__": "api",
    "ingester.lock": "api",
    "ingester.api": "api",
}

BELOW_SETTINGS = {"foundation", "payload", "history", "runtime", "usage", "mirror"}
ALLOWED: dict[str, set[str]] = {
    "foundation": set(),
    "payload": {"foundation"},
    "runtime": {"foundation"},
    "history": {"foundation", "payload"},
    "usage": {"foundation", "payload", "history"},
    "mirror": {"foundation", "payload", "history", "runtime"},
    "settings": BELOW_SETTINGS,
    "intake": {"foundation", "payload", "history", "runtime", "settings"},
    "ops": BELOW_SETTINGS | {"settings", "intake"},
    "serve": {"foundation", "payload", "history", "runtime", "usage", "settings", "intake"},
    "cli": BELOW_SETTINGS | {"settings", "intake", "ops", "serve"},
    # The package's own face: the Python API (its store takes the commands' mirror hold
    # from the settings) and ``python -m ingester``.
    "api": {"foundation", "payload", "history", "settings", "cli"},
}

# The local store's own modules: its scan, its paths and its writes. The HTTP face and
# remote storage read a history through the reader interface instead (ingester.history:
# the base protocol, the local and in-memory readers, the index), so that they read a
# folder and a bucket alike, with the reader's rules (no symlink followed). A type may
# still name the store it is handed (an import for type checking only).
LOCAL_STORE = {
    "ingester.history.store",
    "ingester.history.batch",
    "ingester.history.latest",
    "ingester.history.cleanup",
}
READS_THROUGH_INTERFACE = {"serve", "mirror"}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module
    target: str  # dotted module imported (or whose name is imported)
    name: str | None  # the name taken from it, if any
    line: int
    typing_only: bool = False  # inside ``if TYPE_CHECKING:``


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def room(module: str) -> str:
    if module in TOP_ROOMS:
        return TOP_ROOMS[module]
    return module.split(".")[1]


def imports(module: str, path: Path) -> Iterator[Import]:
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in node.body
    }
    for node in ast.walk(tree):
        hint = id(node) in typing_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ingester":
                    yield Import(module, alias.name, None, node.lineno, hint)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "ingester":
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:  # ``from pkg import module``
                    yield Import(module, f"{source}.{alias.name}", None, node.lineno, hint)
                else:
                    yield Import(module, source, alias.name, node.lineno, hint)


ALL_IMPORTS = [imp for module, path in MODULES.items() for imp in imports(module, path)]


def _where(imp: Import) -> str:
    what = f"{imp.target}.{imp.name}" if imp.name else imp.target
    return f"{imp.importer}:{imp.line} imports {what}"


def test_every_module_is_in_a_room_with_its_rules() -> None:
    for module in MODULES:
        assert room(module) in ALLOWED, f"{module}: no rule for room {room(module)!r}"
    for target in ALLOWED.values():
        assert target <= set(ALLOWED), target


def test_each_room_imports_only_the_rooms_below_it() -> None:
    wrong = [
        f"{_where(imp)}: {room(imp.importer)} may not import {room(imp.target)}"
        for imp in ALL_IMPORTS
        if room(imp.target) != room(imp.importer)
        and room(imp.target) not in ALLOWED[room(imp.importer)]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_http_face_and_remote_storage_read_the_history_through_its_interface() -> None:
    wrong = [
        _where(imp)
        for imp in ALL_IMPORTS
        if room(imp.importer) in READS_THROUGH_INTERFACE
        and imp.target in LOCAL_STORE
        and not imp.typing_only
    ]
    assert not wrong, "\n".join(wrong)


def test_the_command_line_reaches_nothing_private() -> None:
    wrong = []
    for imp in ALL_IMPORTS:
        if room(imp.importer) != "cli" or room(imp.target) == "cli":
            continue
        leaf = imp.target.rpartition(".")[2]
        if (imp.name or "").startswith("_") or (leaf.startswith("_") and leaf != "__init__"):
            wrong.append(_where(imp))
    for module, path in MODULES.items():
        if room(module) != "cli":
            continue
        bound = {
            (alias.asname or alias.name).split(".")[0]
            for imp_node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(imp_node, (ast.Import, ast.ImportFrom))
            for alias in imp_node.names
            if isinstance(imp_node, ast.ImportFrom) and f"{imp_node.module}.{alias.name}" in MODULES
        }
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_")
            ):
                wrong.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def test_only_the_entry_points_import_the_command_group() -> None:
    wrong = [
        _where(imp)
        for imp in ALL_IMPORTS
        if imp.target == "ingester.cli.group"
        and imp.importer not in ("ingester.cli", "ingester.__main__")
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_at_run_time() -> None:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for imp in ALL_IMPORTS:
        if imp.target in MODULES and imp.target != imp.importer and not imp.typing_only:
            graph[imp.importer].add(imp.target)
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in visiting, " -> ".join([*visiting, module])
        if module in done:
            return
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_every_room_says_what_it_owns_and_may_import() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "Owns" in doc or "owns" in doc, f"{init}: the docstring says nothing it owns"
        assert "May import" in doc, f"{init}: the docstring names no rule for its imports"


def test_the_rules_can_fail() -> None:
    """A core module importing the intake is caught (the check is not vacuous)."""
    bad = Import("ingester.history.store", "ingester.intake.spool", "Spool", 1)
    assert room(bad.target) not in ALLOWED[room(bad.importer)]


def test_the_watcher_loads_no_event_loop() -> None:
    """``watch`` never runs an event loop: importing its path must not load asyncio (nor
    the ssl it brings), 2.5 MB of a watcher whose peak memory the bench holds to a goal.
    Only the HTTP face and the mirror's callers need them, and import them themselves."""
    import subprocess
    import sys

    probe = (
        "import sys, ingester.cli.group, ingester.intake.watcher; "
        "print(sorted(m for m in ('asyncio', 'ssl') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr


# What the everyday commands load, each run, before they do anything. None of them needs
# pydantic's model machinery (the payload's verdict and values come from its gate, the
# mirror's state model only where a state file exists), the HTTP face, the event loop,
# the object store or the watcher: at 5dc17f1 the models alone were a third of status's
# CPU (230 ms a run, the suite runs such commands thousands of times).
EVERYDAY_COMMANDS = (
    ["init"],
    ["ingest", "FILE"],
    ["status"],
    ["status", "--json"],
    ["list"],
    ["show", "latest"],
    ["check", "--json"],
    ["verify"],
    ["export"],
    ["--help"],
)
NOT_ON_THE_EVERYDAY_PATH = (
    "pydantic",
    "annotated_types",
    "ingester.payload.model",
    "ingester.mirror.state_model",
    "ingester.serve",
    "ingester.intake.watcher",
    "asyncio",
    "ssl",
    "boto3",
    "botocore",
    "uvicorn",
    "starlette",
    "prometheus_client",
    "watchdog",
)


def test_the_everyday_commands_load_no_model_server_or_store_client(tmp_path: Path) -> None:
    """``init``, ``ingest``, ``status``, ``list``, ``show``, ``check``, ``verify``, ``export``
    and ``--help`` run (in one process, as click runs them) without loading what only other
    commands need.
    What is loaded, not how long it takes: the gain holds on any machine."""
    import subprocess
    import sys

    sample = Path(__file__).parent / "samples" / "valid" / "full.json"
    runs = [[str(sample) if arg == "FILE" else arg for arg in args] for args in EVERYDAY_COMMANDS]
    probe = (
        "import sys\n"
        "from ingester.cli.group import main\n"
        f"for args in {runs!r}:\n"
        "    try:\n"
        f"        main(['--root', {str(tmp_path)!r}, *args], standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"loaded = [m for m in {NOT_ON_THE_EVERYDAY_PATH!r} if m in sys.modules]\n"
        "print(loaded, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1:] == ["[]"], done.stderr
    assert "stored" in done.stdout and "versions     1" in done.stdout, done.stdout
