"""edge_agent.s3: the one s3:// parser and the one boto3 client factory that the device's fetch,
edge-ctl's pre-signing and cloud-trainer's publish share."""

from __future__ import annotations

import sys
from typing import Optional

import pytest

from edge_agent.config import S3Config
from edge_agent.errors import EdgewatchError
from edge_agent.s3 import S3Error, S3Url, make_client, parse_s3_url, path_style
from tests.s3server import CLEARED_ENV, FAKE_ENV


def test_an_s3_url_is_a_bucket_and_a_key_or_prefix() -> None:
    url = parse_s3_url("s3://bucket/models/shapes/1.0.0/manifest.json")
    assert url == S3Url("bucket", "models/shapes/1.0.0/manifest.json") and not url.is_prefix
    assert parse_s3_url("s3://bucket/models/").is_prefix and parse_s3_url("s3://bucket").is_prefix
    assert parse_s3_url("s3://my.bucket/a/b/").key("n", "v") == "a/b/n/v"
    assert parse_s3_url("s3://bucket").uri("n") == "s3://bucket/n"
    assert parse_s3_url("s3://bucket//a/m.json").path == "a/m.json"  # as the device always read it


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://bucket/m.json", ""),
        ("s3://", "'' is not a valid bucket name"),
        ("s3:///models/m.json", "'' is not a valid bucket name"),
        ("s3://b/m.json", "'b' is not a valid bucket name"),
        ("s3://bucket/a/../m.json", "an empty, '.' or '..' part"),
        ("s3://bucket/a//m.json", "an empty, '.' or '..' part"),
        ("s3://bucket/m.json?versionId=1", "or a \\, ?, # or NUL in it"),
    ],
)
def test_a_bad_s3_url_is_one_error_naming_it(url: str, why: str) -> None:
    with pytest.raises(S3Error) as caught:
        parse_s3_url(url, "s3://BUCKET/KEY")
    assert str(caught.value).startswith(f"{url!r} is not an s3://BUCKET/KEY URI")
    assert why in str(caught.value)
    assert isinstance(caught.value, EdgewatchError)  # a one-line error on every command line


def test_an_object_url_must_name_an_object() -> None:
    with pytest.raises(S3Error, match="names a prefix, not an object"):
        parse_s3_url("s3://bucket/models/", object_key=True)
    assert parse_s3_url("s3://bucket/models/m.json", object_key=True).path == "models/m.json"


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [
        (None, False),  # AWS's default endpoint: botocore decides (virtual-hosted where it can)
        ("https://s3.eu-west-1.amazonaws.com", False),
        ("http://127.0.0.1:9000", True),  # MinIO, moto, Ceph: no bucket names in DNS
        ("https://minio.lan", True),
    ],
)
def test_one_addressing_rule(endpoint: Optional[str], path: bool) -> None:
    assert path_style(endpoint) is path


def isolated_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static fake credentials, none of the user's AWS settings (as tests.s3server gives)."""
    pytest.importorskip("boto3")
    for k in (*CLEARED_ENV, "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in FAKE_ENV.items():
        monkeypatch.setenv(k, v)


def test_the_client_follows_the_rule_and_the_s3_section(monkeypatch: pytest.MonkeyPatch) -> None:
    isolated_aws_env(monkeypatch)
    custom = make_client(S3Config(endpoint_url="http://127.0.0.1:9000", region="eu-west-1"), read_timeout_s=7)
    assert custom.meta.endpoint_url == "http://127.0.0.1:9000" and custom.meta.region_name == "eu-west-1"
    assert custom.meta.config.s3 == {"addressing_style": "path"}
    assert custom.meta.config.signature_version == "s3v4" and custom.meta.config.read_timeout == 7
    assert custom.meta.config.retries == {"mode": "standard"}
    aws = make_client(S3Config(region="eu-west-1"))
    assert (aws.meta.config.s3 or {}).get("addressing_style") in (None, "auto")


def test_the_client_names_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    isolated_aws_env(monkeypatch)
    with pytest.raises(S3Error, match=r"^--endpoint-url '127.0.0.1:9000' is not an http:// or https:// URL$"):
        make_client(S3Config(endpoint_url="127.0.0.1:9000"), endpoint_option="--endpoint-url")
    with pytest.raises(S3Error, match=r"^s3.endpoint_url 'ftp://h' is not an http:// or https:// URL$"):
        make_client(S3Config(endpoint_url="ftp://h"))
    with pytest.raises(S3Error, match="cannot set up the S3 client: .*nobody"):
        make_client(S3Config(profile="nobody"))
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if the s3 extra were not installed
    with pytest.raises(S3Error, match=r"the s3 extra is not installed \(pip install edgewatch\[s3\]\)"):
        make_client(S3Config())
