"""Shared fixtures and settings. S3: a real SeaweedFS server on 127.0.0.1 for the whole session;
a local Ray per module. Hypothesis: the "ci" profile (chosen when CI is set, or with
--hypothesis-profile=ci) draws the same examples on every run and prints a failing example's
reproduction blob."""
import os

import pytest
import ray
import s3fs
from hypothesis import settings

import s3server

settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("dev", print_blob=True, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


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
def ray_local():
    """A local Ray of 2 CPUs for one test module (started here, so no other module's Ray is reused)."""
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()


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
