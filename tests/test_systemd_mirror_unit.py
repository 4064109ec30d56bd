"""The mirror's systemd unit: it verifies, scores <= 1.5, and runs beside the watcher's.

Like tests/test_systemd_units.py, nothing here boots systemd: ``systemd-analyze`` reads
a copy of the unit whose ExecStart points at this environment's ``ingester``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_systemd_units import (
    NAME,
    SERVICE,
    assert_exposure_within_limit,
    assert_hardened_like_the_watcher,
    assert_verifies,
    installed_copy,
    needs_analyze,
    one,
    parse_unit,
)

MIRROR = SERVICE.parent / f"{NAME}-mirror.service"
EXEC_START = f"/usr/local/bin/ingester --root /var/lib/{NAME} mirror"


@pytest.fixture
def installed_mirror(tmp_path: Path) -> Path:
    return installed_copy(MIRROR, EXEC_START, tmp_path)


def test_mirror_unit_runs_beside_the_watcher_as_the_same_user() -> None:
    mirror, watcher = parse_unit(MIRROR), parse_unit(SERVICE)
    assert one(mirror, "Service.ExecStart") == EXEC_START
    for key in ("User", "Group", "StateDirectory", "UMask", "ProtectSystem"):
        assert one(mirror, f"Service.{key}") == one(watcher, f"Service.{key}"), key
    assert one(mirror, "Service.Type") == "notify"
    assert one(mirror, "Service.Restart") == "on-failure"
    assert one(mirror, "Service.WatchdogSec") not in ("", "0", "infinity")
    # Settings come from an optional file; no secret is written in the unit.
    assert one(mirror, "Service.EnvironmentFile").startswith("-/")
    assert not re.search(
        r"(?i)secret|AWS_SECRET|AWS_ACCESS_KEY",
        "\n".join(line for line in MIRROR.read_text().splitlines() if not line.startswith("#")),
    )
    # The same hardening as the watcher's, less what talking to an object store needs.
    network = {"PrivateNetwork", "IPAddressDeny", "RestrictAddressFamilies"}
    own = {"Type", "ExecStart", "WatchdogSec", "TimeoutStartSec"}
    assert_hardened_like_the_watcher(mirror, watcher, network | own)


@needs_analyze
def test_mirror_unit_verifies(installed_mirror: Path) -> None:
    assert_verifies(installed_mirror)


@needs_analyze
def test_mirror_unit_exposure_is_at_most_1_5(installed_mirror: Path) -> None:
    assert_exposure_within_limit(installed_mirror)
