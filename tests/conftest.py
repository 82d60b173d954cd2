"""Shared fixtures and settings. S3: a real SeaweedFS server on 127.0.0.1 for the whole session.
Hypothesis: the "ci" profile (chosen when CI is set, or with --hypothesis-profile=ci) draws
the same examples on every run and prints a failing example's reproduction blob."""
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


@pytest.fixture
def s3_env(s3, monkeypatch) -> s3server.S3Server:
    """For one test, the standard AWS settings point at the test server and nothing else."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, os.devnull)  # no profile from ~/.aws
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of this test module's own (never another's): 2 CPUs, a small object store."""
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()
