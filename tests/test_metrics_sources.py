"""Each gauge of ``serve``'s ``/metrics`` goes only when its own source cannot be read.

A serve refused the history (run as another uid, the history's mode changed) still lists
the spool: the spool's gauges stay, so an alert on drops waiting can still fire, and
``ingester_history_readable`` says what is missing. One it may enter but not list still
gives the totals of its metadata file.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.capabilities import AS_OTHER, other_user_problem, others_folder, run_as_other
from support.serveproc import KEY, ServeProcess, fresh_payload, put_version, version_name

API = "/api/claude/console-usage"
WHY_NOT = other_user_problem()


def _samples(text: str) -> dict[str, float]:
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_the_spool_gauges_stay_while_the_history_cannot_be_read() -> None:
    with others_folder("ingester-metrics-sources-") as root:
        assert run_as_other(root, "init").returncode == 0
        put_version(root, version_name(datetime.now(UTC)), fresh_payload())
        history = root / "console-usage-history"
        with ServeProcess(root, wrapper=tuple(AS_OTHER)) as server:
            headers = {"Content-Type": "application/json", "X-API-Key": KEY}
            assert server.post(API, content=fresh_payload(), headers=headers).status_code == 202
            before = _samples(server.get("/metrics").text)
            assert before["ingester_history_readable"] == 1
            assert before["ingester_spool_backlog"] == 1
            history.chmod(0)
            try:
                found = _samples(server.get("/metrics").text)
            finally:
                history.chmod(0o755)
            assert found["ingester_history_readable"] == 0
            assert "ingester_versions" not in found
            # The spool is readable: its gauges are there, with what it holds.
            assert found["ingester_spool_backlog"] == 1
            assert found["ingester_spool_oldest_drop_age_seconds"] >= 0
            assert found["ingester_rejected_drops"] == 0
            assert "ingester_versions_stored_total" not in found  # its file is in there
            # A history that may be entered but not listed: the versions are unknown,
            # the metadata file, read by its name, is not.
            history.chmod(0o111)
            try:
                # A new version: the listing serve holds is out of date, and a new one fails.
                put_version(root, version_name(datetime.now(UTC), 1), fresh_payload())
                found = _samples(server.get("/metrics").text)
            finally:
                history.chmod(0o755)
            assert found["ingester_history_readable"] == 0
            assert found["ingester_versions_stored_total"] >= 0
            assert found["ingester_spool_backlog"] == 1
            assert server.stop() == 0
        assert "Traceback" not in server.log
