"""``MirrorState``: the model of ``<history>/_mirror.json`` (:mod:`ingester.mirror.state`).

A module of its own so that pydantic, whose model machinery costs some 50 ms of a
command's start, is loaded only where a state file is read or written: by the mirror,
and by ``status``, ``check`` and retention only when a mirror's state file exists.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from ..history.retention import DEFAULT_HOLD_MAX

__all__ = ["MirrorState"]


class MirrorState(BaseModel):
    """``_mirror.json``: the mirror's watermark, its hold bound and how it is doing."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    # The bound first: the file's first two lines are what the mirror cuts it to where it
    # cannot replace it (:func:`~.state.withdraw_watermark`), and the hold must survive.
    hold_max: int = Field(DEFAULT_HOLD_MAX, alias="holdMax", ge=0)
    target: str = ""
    mirrored_through: str | None = Field(None, alias="mirroredThrough")
    retention: str = "keep"
    state: str = "starting"
    detail: str | None = None
    since: str | None = None
    updated_at: str | None = Field(None, alias="updatedAt")
    last_success_at: str | None = Field(None, alias="lastSuccessAt")
    waiting: int = Field(0, ge=0)

    def to_json_bytes(self) -> bytes:
        """The file's bytes."""
        return (json.dumps(self.model_dump(by_alias=True), indent=2) + "\n").encode()
