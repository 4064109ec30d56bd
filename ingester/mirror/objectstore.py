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

Every object the mirror writes carries what it is: ``Content-Type: application/json``,
and in user metadata (``x-amz-meta-*``) the SHA-256 of its bytes, which the mirror
computes itself and checks on the way back, and, on the latest copy, the version it
copies. The ETag is never taken for a checksum: with SSE-KMS or SSE-C (and for
multipart uploads) it is not the MD5 of the bytes, and nothing in its shape says so.
User metadata rather than S3's newer ``x-amz-checksum-sha256``: every S3-compatible
store keeps metadata and returns it on a plain GET or HEAD, while the checksum headers
are not kept by all of them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..errors import BadEndpoint, ObjectStoreUnavailable

S3Client = Any
"""A boto3 S3 client (boto3 ships no type hints of its own)."""

__all__ = [
    "LATEST_KEY",
    "METADATA_KEY",
    "SHA256_META",
    "VERSION_META",
    "ClientNotMade",
    "Failure",
    "MirrorTarget",
    "ObjectStoreUnavailable",
    "RemoteObject",
    "S3Client",
    "classify",
    "content_md5",
    "head_remote",
    "list_remote",
    "make_client",
    "parse_target",
    "put_arguments",
    "refusal",
    "refused_by_policy",
    "require_boto3",
    "sha256_hex",
]

METADATA_KEY = "_metadata.json"
"""The metadata object's name under the prefix."""
LATEST_KEY = "console-usage-synced.json"
"""The latest object's name under the prefix: a copy of the newest version."""
SHA256_META = "sha256"
"""User metadata (``x-amz-meta-sha256``): the hex SHA-256 of the object's bytes."""
VERSION_META = "version"
"""User metadata (``x-amz-meta-version``) of the latest copy: the version it copies."""

# Bucket names as S3 allows them (3-63 lower-case letters, digits, dots, hyphens).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of ``data``, as the mirror stores it with each object."""
    return hashlib.sha256(data).hexdigest()


def put_arguments(
    target: MirrorTarget, name: str, data: bytes, *, copies: str | None = None
) -> dict[str, Any]:
    """``PutObject`` arguments for ``name`` holding ``data``: the bytes checked by the
    server (``Content-MD5``), described (``application/json``), with their SHA-256 and,
    for the latest copy, the version it ``copies`` in user metadata."""
    metadata = {SHA256_META: sha256_hex(data)}
    if copies is not None:
        metadata[VERSION_META] = copies
    return {
        "Bucket": target.bucket,
        "Key": target.key(name),
        "Body": data,
        "ContentMD5": content_md5(data)[0],
        "ContentType": "application/json",
        "Metadata": metadata,
    }


def require_boto3() -> None:
    """Raise :class:`ObjectStoreUnavailable` (naming the extra) when boto3 is missing."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise ObjectStoreUnavailable(
            "the object store needs boto3: pip install 'console-usage-ingester[s3]'"
        ) from None


class ClientNotMade(ObjectStoreUnavailable):
    """botocore could not make the client (``str()`` says why in one line); ``failure``
    is what that means, as for a failed request (a credential process that fails is
    ``denied``): the mirror service waits and tries again, a command reports it."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"cannot make an S3 client: {failure.detail}")
        self.failure = Failure(failure.kind, str(self))


_MIN_POOL = 16  # connections the client keeps open; more when more requests run at once


def make_client(
    endpoint_url: str | None = None, *, timeout: float = 10.0, concurrency: int = 1
) -> S3Client:
    """A new S3 client: credentials from the standard chain, endpoint from the option,
    else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (read by botocore itself).

    A fresh client re-reads the credential chain, so a fixed credentials file takes
    effect without a restart. Retries are ours (the mirror's backoff), not botocore's,
    so an outage is seen and logged once instead of hidden behind silent retries.
    ``concurrency``: how many requests may run at once on the client's threads; its
    connection pool holds that many (at least 16), so none is closed after its request
    for want of room and opened again for the next.
    Raises :class:`ObjectStoreUnavailable` when boto3 is not installed, and
    :class:`ClientNotMade` when botocore cannot make the client (its reason in one line).
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
        # One more than the threads: the mirror's own thread asks too (listing, publish).
        max_pool_connections=max(_MIN_POOL, concurrency + 1),
        user_agent_extra="console-usage-ingester",
    )
    _check_endpoint(endpoint_url)
    try:
        session = boto3.session.Session()
        region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
        client: S3Client = session.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region, config=config
        )
    except Exception as exc:
        # A profile that does not exist, a config that does not parse, a bad region, a
        # credential process that fails: botocore says so while making the client.
        failure = classify(exc)
        if failure is None:
            raise
        raise ClientNotMade(failure) from None
    return client


def _check_endpoint(endpoint_url: str | None) -> None:
    """Refuse a malformed endpoint before botocore does (in its own words, as a crash)."""
    for source, url in (
        ("--endpoint-url", endpoint_url),
        ("AWS_ENDPOINT_URL_S3", os.environ.get("AWS_ENDPOINT_URL_S3")),
        ("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL")),
    ):
        if not url:
            continue
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise BadEndpoint(f"{source}: {url!r} is not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadEndpoint(
                f"{source}: {url!r} is not an http:// or https:// URL with a host "
                "(e.g. http://127.0.0.1:9000)"
            )
        return  # the first one given is the one botocore uses


@dataclass(frozen=True)
class RemoteObject:
    """One object: its name under the prefix, size and ETag (no quotes); from a ``HEAD``
    or the mirror's own upload also its stored SHA-256 and (latest copy) the version it
    copies. A listing gives neither: ``None``, as for an object stored without them."""

    name: str
    size: int
    etag: str
    sha256: str | None = None
    version: str | None = None


def head_remote(client: S3Client, target: MirrorTarget, name: str) -> RemoteObject | None:
    """``name``'s object with its metadata (one ``HEAD``), or ``None`` when there is none.

    Raises botocore's errors for anything but "not found"; :func:`classify` tells what
    they mean.
    """
    try:
        head: dict[str, Any] = client.head_object(Bucket=target.bucket, Key=target.key(name))
    except Exception as exc:
        failure = classify(exc)
        if failure is not None and (failure.detail.startswith(("404", "NoSuchKey", "NotFound"))):
            return None
        raise
    metadata = {str(k).lower(): str(v) for k, v in (head.get("Metadata") or {}).items()}
    return RemoteObject(
        name,
        int(head.get("ContentLength", 0)),
        str(head.get("ETag", "")).strip('"'),
        metadata.get(SHA256_META),
        metadata.get(VERSION_META),
    )


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
    credentials, an access rule, the account, the request's time: :func:`refusal` tells
    which), ``no-bucket``, ``exists`` (a conditional PUT found the name taken),
    ``rejected`` (another 4xx, e.g. BadDigest). ``detail`` is one line with the
    service's code and message; it never holds a secret.
    """

    kind: str
    detail: str

    @property
    def transient(self) -> bool:
        """Whether waiting and trying again may help (everything but a taken name)."""
        return self.kind != "exists"

    @property
    def refused_by_policy(self) -> bool:
        """:func:`refused_by_policy` of this failure."""
        return refused_by_policy(self.kind, self.detail)


_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestThrottled",
}
_POLICY_CODES = {"AccessDenied", "403"}
_CLOCK_CODES = {"RequestTimeTooSkewed"}
_ACCOUNT_CODES = {"AllAccessDisabled", "AccountProblem"}
_DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    *_ACCOUNT_CODES,
}

CLOCK = "clock"
"""A refusal of the request's time (``RequestTimeTooSkewed``): this machine's clock is off."""
ACCESS_RULE = "access-rule"
"""A refusal of the action (``AccessDenied``, a bare 403): a policy without it."""
ACCOUNT = "account"
"""A refusal of the whole account or resource (``AllAccessDisabled``, ``AccountProblem``)."""
CREDENTIALS = "credentials"
"""A refusal of the credentials: wrong, expired, missing or not to be fetched."""


def refusal(detail: str | None) -> str:
    """What refused a ``denied`` request, from its ``detail`` (``CODE: message``, or
    botocore's words where no request was made): :data:`CLOCK`, :data:`ACCESS_RULE`,
    :data:`ACCOUNT`, else :data:`CREDENTIALS` (an unknown or missing detail too: a
    ``denied`` recorded before its detail was kept was said as the credentials).

    The one reading of a refusal: the mirror's words, ``status`` and ``check`` all say
    it through this, so none of them blames the keys for a policy or the clock."""
    code = (detail or "").split(":", 1)[0].strip()
    if code in _CLOCK_CODES:
        return CLOCK
    if code in _POLICY_CODES:
        return ACCESS_RULE
    if code in _ACCOUNT_CODES:
        return ACCOUNT
    return CREDENTIALS


def refused_by_policy(kind: str, detail: str) -> bool:
    """Whether a failure (its ``kind`` and ``detail``) is the store refusing this one
    action (``403 AccessDenied``, or a bare 403 where the answer has no body: a policy
    without it), rather than the request itself: its credentials or its time
    (``RequestTimeTooSkewed``: this machine's clock is off), which every request shares.
    Only such a refusal may be said as a missing access rule and let the pass go on;
    the others stop it like any refused request, and are said as what they are."""
    return kind == "denied" and refusal(detail) == ACCESS_RULE


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
        return Failure("denied", f"cannot fetch credentials: {' '.join(str(exc).split())}")
    if isinstance(exc, RuntimeError) and "credentials" in str(exc).lower():
        # botocore's own words for credentials a refresh brought back already expired:
        # a plain RuntimeError, yet a matter of credentials like the ones above.
        return Failure("denied", " ".join(str(exc).split()))
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
