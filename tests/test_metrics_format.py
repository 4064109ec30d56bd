"""Our metrics follow Prometheus' conventions and our own naming rules
(``ingester/runtime/metrics.py``),
on real scrapes of ``serve`` and of ``watch --metrics``; the docs' alert rules load in
Prometheus' own tool and name only series that exist.

``promtool`` (Debian's prometheus package; ``.ci/run`` installs it) lints the exposition
(``check metrics``) and the rules files (``check rules``).
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from support import PROMTOOL, VALID_SAMPLES, promtool, run_cli, wait_for
from support.serveproc import KEY, ServeProcess, fresh_payload
from support.watchproc import WatchProcess, drop, payload

REPO = Path(__file__).resolve().parents[1]
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)"
)


# Suffixes the exposition formats give a meaning to: a family may not end in one.
RESERVED = ("_total", "_created", "_count", "_sum", "_bucket", "_info", "_gcount", "_gsum")
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}


@pytest.fixture(scope="module")
def serve_text(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scrape of a real serve that has answered, accepted a POST and refused a connection."""
    root = tmp_path_factory.mktemp("metrics") / "root"
    root.mkdir()
    assert run_cli(root, "init").returncode == 0
    assert run_cli(root, "ingest", *map(str, VALID_SAMPLES)).returncode == 0
    assert run_cli(root, "cleanup").returncode == 0
    with ServeProcess(root, "--max-connections-per-client", "1") as server:
        assert server.get("/api/claude/console-usage").status_code == 200
        r = server.post(
            "/api/claude/console-usage",
            content=fresh_payload(),
            headers={"Content-Type": "application/json", "X-API-Key": KEY},
        )
        assert r.status_code == 202
        # The client's keep-alive connection is the address's one slot: another is refused.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert extra.recv(100).startswith(b"HTTP/1.1 503 ")
        yield server.get("/metrics").text


@pytest.fixture(scope="module")
def watch_text(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scrape of a real watcher's metrics after one drop stored and one rejected."""
    root = tmp_path_factory.mktemp("watch") / "root"
    root.mkdir()
    with WatchProcess(root, "--metrics", "127.0.0.1:0") as watcher:
        watcher.wait_log("metrics on http://")
        port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", watcher.log)[1]
        drop(root / "spool", "good.json", payload(1))
        drop(root / "spool", "bad.json", b"{not json")
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape(accept: str = "text/plain") -> str:
            request = urllib.request.Request(url, headers={"Accept": accept})
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.read().decode()

        wait_for(lambda: "ingester_watch_drops_ingested_total 1.0" in scrape(), 15, "an ingest")
        text = scrape()
        # OpenMetrics, which Prometheus asks for first, has no _created samples either.
        om = scrape("application/openmetrics-text; version=1.0.0")
        assert om.rstrip().endswith("# EOF")
        for family in openmetrics_families(om):
            assert not [s.name for s in family.samples if s.name.endswith("_created")]
        yield text


def families(text: str) -> dict[str, tuple[str, set[str]]]:
    """family name -> (type, the sample names it exposes)."""
    return {
        f.name: (f.type, {s.name for s in f.samples}) for f in text_string_to_metric_families(text)
    }


@needs_promtool
@pytest.mark.parametrize("which", ["serve", "watch"])
def test_promtool_finds_nothing_to_lint(which: str, request: pytest.FixtureRequest) -> None:
    text = request.getfixturevalue(f"{which}_text")
    done = promtool("check", "metrics", given=text)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )


@pytest.mark.parametrize("which", ["serve", "watch"])
def test_names_follow_the_rules(which: str, request: pytest.FixtureRequest) -> None:
    found = families(request.getfixturevalue(f"{which}_text"))
    assert found
    for name, (kind, samples) in found.items():
        assert name.startswith("ingester_"), name
        assert not name.endswith(RESERVED), f"{name}: the family name ends in a reserved suffix"
        assert kind in SAMPLE_SUFFIXES, f"{name}: type {kind}"
        allowed = {name + suffix for suffix in SAMPLE_SUFFIXES[kind]}
        assert samples <= allowed, f"{name} ({kind}) exposes {samples - allowed}"
        assert not any(s.endswith("_created") for s in samples), name
        if kind == "gauge":
            assert not name.endswith("_total")


@pytest.mark.parametrize("which", ["serve", "watch"])
def test_every_unix_time_is_named_timestamp_seconds(
    which: str, request: pytest.FixtureRequest
) -> None:
    """A family whose help says it holds a Unix time ends in ``_timestamp_seconds``, the
    rule the docs state, so ``time() - x_timestamp_seconds`` reads as an age everywhere."""
    text = request.getfixturevalue(f"{which}_text")
    unix = re.compile(r"\bUnix (seconds|time)\b")
    times = [f for f in text_string_to_metric_families(text) if unix.search(f.documentation)]
    assert times
    wrong = [f.name for f in times if not f.name.endswith("_timestamp_seconds")]
    assert not wrong, f"Unix times not named *_timestamp_seconds: {wrong}"


def test_metadata_totals_are_counters(serve_text: str, tmp_path: Path) -> None:
    found = families(serve_text)
    assert found["ingester_versions_stored"] == ("counter", {"ingester_versions_stored_total"})
    assert found["ingester_versions_deleted"] == ("counter", {"ingester_versions_deleted_total"})
    assert "ingester_versions_created" not in found  # the old gauge's name
    assert f"ingester_versions_stored_total {float(len(VALID_SAMPLES))}" in serve_text
    for outcome in ("accepted", "invalid", "unauthorized", "unsupported", "refused"):
        assert f'ingester_http_posts_total{{outcome="{outcome}"}}' in serve_text
    assert 'ingester_http_posts_total{outcome="accepted"} 1.0' in serve_text
    assert 'ingester_http_connections_refused_total{reason="per_client"} 1.0' in serve_text


# -- the docs -------------------------------------------------------------------------------

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_YAML = re.compile(r"```ya?ml\n(.*?)```", re.S)


def rules_blocks() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for i, block in enumerate(_YAML.findall(doc.read_text())):
            if re.search(r"^groups:", block, re.M):
                out.append((f"{doc.name}#{i}", block))
    return out


@needs_promtool
@pytest.mark.parametrize(("where", "block"), rules_blocks(), ids=lambda v: v if "#" in v else "")
def test_the_docs_alert_rules_load(where: str, block: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(block)
    done = promtool("check", "rules", str(rules))
    assert done.returncode == 0, f"{where}: {done.stdout}{done.stderr}"


def test_every_series_the_docs_name_is_exported(serve_text: str, watch_text: str) -> None:
    exported = set()
    for name, (_kind, samples) in {**families(serve_text), **families(watch_text)}.items():
        exported |= samples | {name}
    named = {}
    for doc in DOCS:
        for token in re.findall(r"\bingester_[a-z_]+[a-z]\b", doc.read_text()):
            named.setdefault(token, doc.name)
    # Names the docs give as the old ones, on purpose.
    renamed = {
        "ingester_versions_created",
        "ingester_http_requests_created",
        "ingester_usage_resets_at_seconds",
        "ingester_usage_exhausts_at_seconds",
    }
    missing = {n: d for n, d in named.items() if n not in exported and n not in renamed}
    assert not missing, f"the docs name series no scrape has: {json.dumps(missing)}"
