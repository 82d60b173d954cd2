"""Shared fixtures. S3: a real SeaweedFS server on 127.0.0.1 for the whole session."""
import os

import pytest
import s3fs

import s3server


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> s3server.S3Server:
    """The running test server: .endpoint, .key, .secret, .bucket (which exists and is writable)."""
    server = s3server.start(tmp_path_factory.mktemp("s3"))
    yield server
    s3server.stop(server)


def _point_aws_at(server: s3server.S3Server, monkeypatch) -> None:
    """The standard AWS settings point at `server` and nothing else."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, os.devnull)  # no profile from ~/.aws
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_env(s3, monkeypatch) -> s3server.S3Server:
    """For one test, the standard AWS settings point at the test server and nothing else."""
    _point_aws_at(s3, monkeypatch)
    yield s3
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory) -> s3server.S3Server:
    """A server of this module's own, which its tests may stop and start again (s3server.stop,
    s3server.start_again) without disturbing the session's."""
    server = s3server.start(tmp_path_factory.mktemp("own-s3"))
    yield server
    s3server.stop(server)


@pytest.fixture
def own_s3_env(own_s3, monkeypatch) -> s3server.S3Server:
    """For one test, the AWS settings point at the module's own server, which is running."""
    if own_s3.process.poll() is not None:  # a test before stopped it
        s3server.start_again(own_s3)
    _point_aws_at(own_s3, monkeypatch)
    yield own_s3
    s3fs.S3FileSystem.clear_instance_cache()
