"""S3-compatible object storage: the target, the client, and what a failure means.

The client is boto3 (botocore underneath). It is imported only when an object store is
actually used, so the watcher and every local command work without it; a missing
install is one line naming the extra to install (:class:`ObjectStoreUnavailable`).

Why boto3 rather than obstore: the mirror is I/O-light (a few small PUTs a minute),
so obstore's speed buys nothing, while boto3 gives the full standard credential chain
(environment, shared config and SSO, instance profile, web identity) and the standard
``AWS_ENDPOINT_URL`` settings out of the box, conditional PUT (``IfNoneMatch``) and
``ContentMD5`` as plain parameters, and error codes we can act on one by one.

Nothing secret is ever put into a log line or a message here: a failure is described
by its kind, the service's error code and message, never by the credentials.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

S3Client = Any
"""A boto3 S3 client (boto3 ships no type hints of its own)."""

__all__ = [
    "LATEST_KEY",
    "METADATA_KEY",
    "Failure",
    "MirrorTarget",
    "ObjectStoreUnavailable",
    "RemoteObject",
    "S3Client",
    "classify",
    "content_md5",
    "list_remote",
    "make_client",
    "parse_target",
    "require_boto3",
]

METADATA_KEY = "_metadata.json"
"""The metadata object's name under the prefix."""
LATEST_KEY = "console-usage-synced.json"
"""The latest object's name under the prefix: a copy of the newest version."""

# Bucket names as S3 allows them (3-63 lower-case letters, digits, dots, hyphens).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ObjectStoreUnavailable(RuntimeError):
    """boto3 is not installed; ``str()`` says which extra to install."""


@dataclass(frozen=True)
class MirrorTarget:
    """``s3://BUCKET/PREFIX``: where a history lives in an object store."""

    bucket: str
    prefix: str  # without a trailing slash; "" for the bucket's top

    def key(self, name: str) -> str:
        """The object key of ``name`` (a version name, or one of the two fixed names)."""
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def list_prefix(self) -> str:
        """What a listing of this history's objects asks for."""
        return f"{self.prefix}/" if self.prefix else ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_target(text: str) -> MirrorTarget:
    """Parse ``s3://BUCKET[/PREFIX]``; :class:`ValueError` with the reason if it is not one."""
    if not isinstance(text, str) or not text.startswith("s3://"):
        raise ValueError(f"{text!r} is not an s3://BUCKET/PREFIX address")
    rest = text[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"{bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError(f"prefix {prefix!r} has an empty, '.' or '..' part")
    if any(ord(c) < 32 or c == "\x7f" for c in prefix):
        raise ValueError("the prefix must not contain control characters")
    return MirrorTarget(bucket, prefix)


def content_md5(data: bytes) -> tuple[str, str]:
    """``(base64 digest for Content-MD5, hex digest as a single-part ETag shows it)``."""
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode(), digest.hex()


def require_boto3() -> None:
    """Raise :class:`ObjectStoreUnavailable` (naming the extra) when boto3 is missing."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise ObjectStoreUnavailable(
            "the object store needs boto3: pip install 'console-usage-ingester[s3]'"
        ) from None


def make_client(endpoint_url: str | None = None, *, timeout: float = 10.0) -> S3Client:
    """A new S3 client: credentials from the standard chain, endpoint from the option,
    else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (read by botocore itself).

    A fresh client re-reads the credential chain, so a fixed credentials file takes
    effect without a restart. Retries are ours (the mirror's backoff), not botocore's,
    so an outage is seen and logged once instead of hidden behind silent retries.
    Raises :class:`ObjectStoreUnavailable` when boto3 is not installed.
    """
    require_boto3()
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=min(timeout, 3.0),
        read_timeout=timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        # Content-MD5 is what we send and every S3-compatible store checks; botocore's
        # default trailing CRC32 (aws-chunked) is not understood by all of them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=16,
        user_agent_extra="console-usage-ingester",
    )
    session = boto3.session.Session()
    region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
    client: S3Client = session.client(
        "s3", endpoint_url=endpoint_url or None, region_name=region, config=config
    )
    return client


@dataclass(frozen=True)
class RemoteObject:
    """One object of a listing: its name under the prefix, size and ETag (no quotes)."""

    name: str
    size: int
    etag: str


def list_remote(client: S3Client, target: MirrorTarget) -> dict[str, RemoteObject]:
    """Every object directly under the prefix (not in deeper "folders"), by name.

    Raises botocore's errors as they come; :func:`classify` tells what they mean.
    """
    found: dict[str, RemoteObject] = {}
    paginator = client.get_paginator("list_objects_v2")
    prefix = target.list_prefix
    for page in paginator.paginate(Bucket=target.bucket, Prefix=prefix, Delimiter="/"):
        for item in page.get("Contents", []):
            name = item["Key"][len(prefix) :]
            if name and "/" not in name:
                found[name] = RemoteObject(name, int(item["Size"]), item["ETag"].strip('"'))
    return found


@dataclass(frozen=True)
class Failure:
    """What a failed request means for the mirror.

    ``kind`` is one of ``unreachable`` (no connection, timeout), ``throttled``
    (503 SlowDown, 429), ``server-error`` (other 5xx), ``denied`` (bad or missing
    credentials, access denied), ``no-bucket``, ``exists`` (a conditional PUT found
    the name taken), ``rejected`` (another 4xx, e.g. BadDigest). ``detail`` is one line
    with the service's code and message; it never holds a secret.
    """

    kind: str
    detail: str

    @property
    def transient(self) -> bool:
        """Whether waiting and trying again may help (everything but a taken name)."""
        return self.kind != "exists"


_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestThrottled",
}
_DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
}


def classify(exc: BaseException) -> Failure | None:
    """What a botocore exception means (``None`` for anything that is not one)."""
    try:
        from botocore import exceptions as bex
    except ImportError:  # pragma: no cover - only reached with boto3 installed
        return None
    if isinstance(exc, bex.ClientError):
        response: dict[str, Any] = dict(exc.response)
        error = response.get("Error", {})
        code = str(error.get("Code", ""))
        message = " ".join(str(error.get("Message", "")).split())
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = f"{code or status}: {message}" if message else f"{code or status}"
        if code == "PreconditionFailed" or status == 412:
            return Failure("exists", detail)
        if code in _THROTTLE_CODES or status == 429 or (status == 503 and code != "NotImplemented"):
            return Failure("throttled", detail)
        if status >= 500:
            return Failure("server-error", detail)
        if code in _DENIED_CODES or status in (401, 403):
            return Failure("denied", detail)
        if code == "NoSuchBucket":
            return Failure("no-bucket", detail)
        return Failure("rejected", detail)
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return Failure("denied", f"no usable credentials ({type(exc).__name__})")
    if isinstance(exc, bex.CredentialRetrievalError | bex.TokenRetrievalError):
        return Failure("denied", "cannot fetch credentials")
    if isinstance(
        exc,
        bex.EndpointConnectionError
        | bex.ConnectionError
        | bex.ConnectionClosedError
        | bex.ReadTimeoutError
        | bex.ConnectTimeoutError
        | bex.HTTPClientError,
    ):
        return Failure("unreachable", " ".join(str(exc).split()))
    if isinstance(exc, bex.BotoCoreError):
        return Failure("rejected", " ".join(str(exc).split()))
    return None
