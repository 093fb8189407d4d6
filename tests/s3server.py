"""A real S3 HTTP endpoint on loopback for tests: moto's server in a thread (SPEC §8).

Fixtures:
- ``s3_endpoint`` (session): the server, started once on 127.0.0.1 with a free port; its URL.
- ``s3`` (function): fake credentials in the environment (inherited by subprocesses, isolated
  from the user's own AWS config), a fresh bucket, and a boto3 client for it.

Nothing here talks to any address but 127.0.0.1: the credentials are static, the instance
metadata lookup is disabled, proxies are bypassed and addressing is path-style.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List

import pytest

REGION = "us-east-1"
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
CLEARED_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION")

_buckets = itertools.count()


def make_client(endpoint_url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=FAKE_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_ENV["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@dataclass
class S3:
    endpoint_url: str
    bucket: str
    client: Any

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def keys(self, prefix: str = "") -> List[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def new_client(self) -> Any:
        """Another client for the same endpoint (e.g. to hook its events separately)."""
        return make_client(self.endpoint_url)


@contextlib.contextmanager
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with a free port, for as long as the block runs; its URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def new_bucket(endpoint_url: str) -> S3:
    """A fresh bucket on the endpoint (credentials: FAKE_ENV, which a subprocess must get too)."""
    client = make_client(endpoint_url)
    bucket = f"edgewatch-test-{next(_buckets)}"
    client.create_bucket(Bucket=bucket)
    return S3(endpoint_url=endpoint_url, bucket=bucket, client=client)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    env: Dict[str, str] = dict(FAKE_ENV)
    for k in CLEARED_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield new_bucket(s3_endpoint)
