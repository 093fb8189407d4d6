"""``edge-ctl deploy --presign``: turn an s3:// bundle into pre-signed https URLs, so that the
device downloads it with no AWS credentials of its own.

The operator's credentials read the manifest (which also checks it and pins its sha256) and
sign a GET URL for it, for ``manifest.sig`` when there is one, and for every artifact file,
OpenVINO weights and configs included.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

from ..bundle import SIGNATURE, parse_manifest
from ..errors import EdgewatchError

# SigV4 pre-signed URLs live at most 7 days.
MAX_URL_EXPIRES_S = 7 * 24 * 3600


@dataclass(frozen=True)
class PresignedBundle:
    manifest_url: str
    manifest_sha256: str
    files: Dict[str, str]  # file name -> pre-signed URL


def split_s3_uri(uri: str) -> Tuple[str, str]:
    """(bucket, key) of ``s3://BUCKET/KEY``."""
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise EdgewatchError(f"--presign needs an s3://BUCKET/KEY manifest URI, not {uri!r}")
    return parts.netloc, key


def _s3_client(endpoint_url: Optional[str]) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise EdgewatchError("--presign needs boto3: pip install 'edgewatch[s3]'") from None
    # Path-style addressing for custom endpoints (MinIO, moto, Ceph): their bucket names
    # are rarely DNS names. SigV4: the only signature every region accepts.
    config = Config(signature_version="s3v4", s3={"addressing_style": "path" if endpoint_url else "auto"})
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def _object_size(client: Any, bucket: str, key: str) -> Optional[int]:
    """The object's size, or None when there is no such object."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
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
    bucket, manifest_key = split_s3_uri(manifest_uri)
    client = _s3_client(endpoint_url)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        data = client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    except ClientError as e:
        raise EdgewatchError(f"{manifest_uri}: {e.response.get('Error', {}).get('Message') or e}") from None
    except BotoCoreError as e:
        raise EdgewatchError(f"{manifest_uri}: {e}") from None
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
        raise EdgewatchError(f"{manifest_uri}: {e}") from None
    return PresignedBundle(manifest_url=manifest_url, manifest_sha256=sha256, files=files)
