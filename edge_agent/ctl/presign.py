"""The operator's side of S3 for ``edge-ctl deploy``.

``--presign`` turns an s3:// bundle into pre-signed https URLs, so that the device downloads it
with no AWS credentials of its own. A channel pointer (``s3://…/NAME/channels/CHANNEL.json``,
written by ``cloud-trainer publish --channel``) is resolved here too, so a device is always sent
one exact version with its manifest sha256 pinned, never a name that can move under it.

The operator's credentials read the manifest (which also checks it and pins its sha256) and
sign a GET URL for it, for ``manifest.sig`` when there is one, and for every artifact file,
OpenVINO weights and configs included.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..config import S3Config
from ..errors import EdgewatchError
from ..s3 import NOT_FOUND_CODES, S3Error, S3Url, error_code, make_client, parse_s3_url

# SigV4 pre-signed URLs live at most 7 days.
MAX_URL_EXPIRES_S = 7 * 24 * 3600


@dataclass(frozen=True)
class PresignedBundle:
    manifest_url: str
    manifest_sha256: str
    files: Dict[str, str]  # file name -> pre-signed URL


def _client(endpoint_url: Optional[str]) -> Any:
    """The operator's S3 client: the usual credential chain, ``--endpoint-url`` if given."""
    return make_client(S3Config(endpoint_url=endpoint_url), endpoint_option="--endpoint-url")


def _read_object(client: Any, url: S3Url) -> bytes:
    """The bytes of the object at ``url``, or an error naming it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        data: bytes = client.get_object(Bucket=url.bucket, Key=url.path)["Body"].read()
    except ClientError as e:
        message = e.response.get("Error", {}).get("Message") or e
        raise EdgewatchError(f"{url.uri()}: {message}") from e
    except BotoCoreError as e:
        raise EdgewatchError(f"{url.uri()}: {e}") from e
    return data


def _object_size(client: Any, bucket: str, key: str) -> Optional[int]:
    """The object's size, or None when there is no such object."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if error_code(e) in NOT_FOUND_CODES:
            return None
        raise
    return int(head["ContentLength"])


def presign_bundle(
    manifest_uri: str,
    expires_s: int,
    endpoint_url: Optional[str] = None,
    expected_sha256: Optional[str] = None,
) -> PresignedBundle:
    """Read and check the manifest at ``manifest_uri``, and pre-sign every file of the bundle."""
    if not 0 < expires_s <= MAX_URL_EXPIRES_S:
        raise EdgewatchError(f"pre-signed URLs can live 1 to {MAX_URL_EXPIRES_S} s, not {expires_s}")
    url = parse_s3_url(manifest_uri, object_key=True)
    bucket, manifest_key = url.bucket, url.path
    client = _client(endpoint_url)
    from botocore.exceptions import BotoCoreError, ClientError

    # The device's own check of a manifest: it knows every decoder's params, and so imports the
    # decoders (and numpy) on first use; nothing else edge-ctl does needs them.
    from ..bundle.loader import SIGNATURE, parse_manifest

    data = _read_object(client, url)
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and expected_sha256 != sha256:
        raise EdgewatchError(
            f"{manifest_uri}: sha256 is {sha256}, not the {expected_sha256} given by --sha256"
        )
    manifest = parse_manifest(data, manifest_uri)
    prefix = posixpath.dirname(manifest_key)

    def key_of(name: str) -> str:
        return posixpath.join(prefix, name) if prefix else name

    def presign(name: str) -> str:
        url: str = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key_of(name)}, ExpiresIn=expires_s
        )
        return url

    files: Dict[str, str] = {}
    try:
        # A half-uploaded bundle is caught here rather than on every device.
        for artifact in manifest.artifacts:
            for name, _, size in artifact.files():
                actual = _object_size(client, bucket, key_of(name))
                if actual is None:
                    raise EdgewatchError(f"s3://{bucket}/{key_of(name)}: missing (listed by the manifest)")
                if actual != size:
                    raise EdgewatchError(
                        f"s3://{bucket}/{key_of(name)}: {actual} bytes, the manifest says {size}"
                    )
                files[name] = presign(name)
        if _object_size(client, bucket, key_of(SIGNATURE)) is not None:
            files[SIGNATURE] = presign(SIGNATURE)
        manifest_url = presign(posixpath.basename(manifest_key))
    except (BotoCoreError, ClientError) as e:
        raise EdgewatchError(f"{manifest_uri}: {e}") from e
    return PresignedBundle(manifest_url=manifest_url, manifest_sha256=sha256, files=files)


CHANNEL_KEY = re.compile(r"(^|/)channels/[a-z0-9][a-z0-9._-]{0,63}\.json$")


def is_channel_uri(uri: str) -> bool:
    try:
        url = parse_s3_url(uri, object_key=True)
    except S3Error:
        return False
    return bool(CHANNEL_KEY.search(url.path))


@dataclass(frozen=True)
class ChannelPointer:
    version: str
    manifest: str  # s3://…/NAME/VERSION/manifest.json
    sha256: str


def resolve_channel(uri: str, endpoint_url: Optional[str] = None) -> ChannelPointer:
    """Read the channel file at ``uri``: the version it points at, and that version's manifest
    URI and sha256."""
    data = _read_object(_client(endpoint_url), parse_s3_url(uri, object_key=True))
    try:
        doc = json.loads(data)
        pointer = ChannelPointer(
            version=str(doc["version"]), manifest=str(doc["manifest"]), sha256=str(doc["sha256"])
        )
    except (ValueError, KeyError, TypeError) as e:
        raise EdgewatchError(f"{uri}: not a channel file ({{version, manifest, sha256}}): {e}") from e
    if not pointer.manifest.startswith("s3://") or not re.fullmatch(r"[0-9a-f]{64}", pointer.sha256):
        raise EdgewatchError(f"{uri}: the channel's manifest must be an s3:// URI with a sha256")
    return pointer
