"""The forecast served from an object store (``serve --from s3://``), as from the history."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from support import run_cli
from support.s3server import SeaweedS3
from support.serveproc import ServeProcess
from test_forecast_served import FORECAST, ZONE, expect_known_answer, fed  # noqa: F401
from test_mirror import aws_files, bucket, s3, s3_env  # noqa: F401 - fixtures


def test_forecast_served_from_the_object_store(
    root: Path,
    tmp_path: Path,
    fed: tuple[ServeProcess, datetime],  # noqa: F811
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    aws_files: dict[str, str],  # noqa: F811
) -> None:
    server, last = fed
    local = server.get(FORECAST)
    target = f"s3://{bucket}/usage"
    env = s3_env(s3.endpoint, aws_files)
    mirrored = run_cli(root, "mirror", target, "--once", **env)
    assert mirrored.returncode == 0, mirrored.stderr
    replica = tmp_path / "replica"  # a machine without the history
    serve_env = {**env, "INGESTER_CONSOLE_TIMEZONE": ZONE}
    with ServeProcess(replica, "--from", target, key=None, env=serve_env) as remote:
        answer = remote.get(FORECAST)
        assert answer.status_code == 200, answer.text
        expect_known_answer(answer.json(), last)
        assert answer.json() == local.json()
        assert answer.headers["etag"] == local.headers["etag"]
        tag = answer.headers["etag"]
        assert remote.get(FORECAST, headers={"If-None-Match": tag}).status_code == 304
