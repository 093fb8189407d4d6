"""S3, once for the whole project (SPEC §2, §3 ``s3``): the ``s3://`` URL and the boto3 client.

The device fetching a bundle (:mod:`edge_agent.store.fetch`), the operator pre-signing one
(:mod:`edge_agent.ctl.presign`) and the publisher uploading one (:mod:`cloud_trainer.publish`) all
parse their URLs and make their clients here. boto3 (the ``s3`` extra) is imported only inside
:func:`make_client`: importing this module costs nothing where S3 is never used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

from .config import S3Config
from .errors import EdgewatchError

SCHEME = "s3://"
# DNS-style bucket names, plus the legacy upper case and underscores some old buckets have.
BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")
MISSING_EXTRA = "the s3 extra is not installed (pip install edgewatch[s3])"

# The error codes S3 (and the S3-compatible servers) answer with, by what they mean.
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden"})
CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"})


class S3Error(EdgewatchError):
    """An s3:// URL that is not one, or an S3 client that cannot be set up; names the URL or
    the setting at fault."""


@dataclass(frozen=True)
class S3Url:
    """``s3://BUCKET/PATH``. PATH (no leading "/") is an object key, or a key prefix when it is
    empty or ends in "/"."""

    bucket: str
    path: str

    @property
    def is_prefix(self) -> bool:
        return not self.path or self.path.endswith("/")

    def key(self, *parts: str) -> str:
        """The key of ``parts`` below PATH taken as a prefix: "/" between, empty parts left out."""
        return "/".join(p for p in (self.path.strip("/"), *parts) if p)

    def uri(self, *parts: str) -> str:
        return f"{SCHEME}{self.bucket}/{self.key(*parts)}"


def parse_s3_url(url: str, form: str = "s3://BUCKET/KEY", *, object_key: bool = False) -> S3Url:
    """``s3://BUCKET[/PATH]`` as an :class:`S3Url`, or an S3Error that names ``url`` as not being
    the ``form`` the caller wants. ``object_key``: PATH must name an object, not a prefix."""
    bad = f"{url!r} is not an {form} URI"
    if url[: len(SCHEME)].lower() != SCHEME:
        raise S3Error(bad)
    bucket, _, path = url[len(SCHEME) :].partition("/")
    if not BUCKET_RE.match(bucket) or ".." in bucket:
        raise S3Error(f"{bad}: {bucket!r} is not a valid bucket name")
    inner = path.strip("/")
    if inner and (any(p in ("", ".", "..") for p in inner.split("/")) or any(c in inner for c in "\\\x00?#")):
        raise S3Error(f"{bad}: {inner!r} has an empty, '.' or '..' part, or a \\, ?, # or NUL in it")
    url_path = path.lstrip("/")
    if object_key and (not url_path or url_path.endswith("/")):
        raise S3Error(f"{bad}: it names a prefix, not an object")
    return S3Url(bucket, url_path)


def error_code(e: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("NoSuchKey", "403", …); "" for other errors."""
    response = getattr(e, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def path_style(endpoint_url: Optional[str]) -> bool:
    """The one addressing rule: path-style (``https://HOST/BUCKET/KEY``) for a custom endpoint
    that is not AWS's own, botocore's default otherwise.

    S3-compatible servers (MinIO, Ceph, moto, a LAN appliance) are reached by an address or a
    host name without a wildcard DNS record, so a bucket name cannot go in front of the host.
    AWS itself, whether by its default endpoint or one given as ``*.amazonaws.com``, is left to
    botocore: virtual-hosted style where the bucket name allows it (AWS is retiring path-style),
    path-style where it does not (dots in the name under TLS). The same rule holds for requests
    and for pre-signed URLs, so a URL the operator signs is one the device can fetch."""
    if endpoint_url is None:
        return False
    return not (urlsplit(endpoint_url).hostname or "").endswith(".amazonaws.com")


def make_client(
    settings: S3Config,
    *,
    connect_timeout_s: Optional[float] = None,
    read_timeout_s: Optional[float] = None,
    endpoint_option: str = "s3.endpoint_url",
) -> Any:
    """A boto3 S3 client for ``settings`` (the configuration's ``s3`` section: ``endpoint_url``,
    ``region``, ``profile``), with credentials from the usual chain (environment, the profile,
    the shared config files, an instance role).

    SigV4 (the only signature every region accepts, pre-signed URLs included); addressing by
    :func:`path_style`; botocore's "standard" retries unless ``AWS_MAX_ATTEMPTS`` or
    ``AWS_RETRY_MODE`` say otherwise; timeouts as given (botocore's 60 s each otherwise).
    ``endpoint_option`` names the endpoint setting in errors (``--endpoint-url`` on a command
    line)."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError
    except ImportError as e:
        raise S3Error(MISSING_EXTRA) from e
    endpoint = settings.endpoint_url
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise S3Error(f"{endpoint_option} {endpoint!r} is not an http:// or https:// URL")
    config: Dict[str, Any] = {"signature_version": "s3v4"}
    if path_style(endpoint):
        config["s3"] = {"addressing_style": "path"}
    if connect_timeout_s is not None:
        config["connect_timeout"] = connect_timeout_s
    if read_timeout_s is not None:
        config["read_timeout"] = read_timeout_s
    if not (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
        config["retries"] = {"mode": "standard"}
    try:
        session = boto3.session.Session(profile_name=settings.profile, region_name=settings.region)
        return session.client("s3", endpoint_url=endpoint, config=Config(**config))
    except (BotoCoreError, ValueError) as e:  # an unknown profile, an invalid endpoint or region
        raise S3Error(f"cannot set up the S3 client: {e}") from e
