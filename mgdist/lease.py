"""One run at a time owns a checkpoint directory: a lease file that names its owner and expires.

`_lease.json` holds the owner's id, host and pid and when the claim expires (wall-clock time,
so hosts' clocks must agree to within the ttl). The owner renews it at each save and
periodically (keep_alive); a stale lease is taken over only once it has expired, or when its
holder is a process of this host that no longer exists, or explicitly (`take_over`, which
`--resume` passes). A run whose lease was taken over stops at its next renewal (LeaseLost).

Read-decide-write is atomic: on a local disk under flock() of `_lease.lock` (this host's
processes, or hosts sharing a file system with working locks); on S3 with conditional PUTs,
If-None-Match: * to create and If-Match: <ETag> to replace. SeaweedFS 4.48 refuses a PUT
whose precondition fails (PreconditionFailed): measured, and tests/test_lease.py races four
runs for one directory; AWS S3 documents both conditions. Only release()
deletes without a condition (s3fs has no conditional DELETE): a run that takes the lease
over in the moment between its read and its delete loses it again and stops at its first save.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Iterator

import botocore.exceptions as boto
from fsspec.implementations.local import LocalFileSystem

from mgdist import checkpoint
from mgdist.checkpoint import CheckpointError
from mgdist.data import DataError, Storage, filesystem
from mgdist.retry import retrying

LEASE, LOCK = "_lease.json", "_lease.lock"
TTL_S = 300.0  # a lease not renewed for this long is free to take over


class LeaseHeld(CheckpointError):
    """Another live run owns the directory."""


class LeaseLost(CheckpointError):
    """Another run has taken over the directory this run owned."""


class _Conflict(Exception):
    """A conditional write found the lease changed since it was read."""


@dataclass(frozen=True)
class Holder:
    """What a lease file says."""
    owner: str
    host: str
    pid: int
    expires: float  # time.time() after which the lease is free

    def gone(self) -> bool:
        """Expired, or a process of this host that has ended."""
        if time.time() >= self.expires:
            return True
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        return False

    def __str__(self) -> str:
        left = self.expires - time.time()
        return (f"run {self.owner} on host {self.host} (pid {self.pid}), lease "
                + (f"valid for {left:.0f} s more" if left > 0 else f"expired {-left:.0f} s ago"))


@dataclass
class Lease:
    """This run's claim on `directory`: acquire() once, renew() at each save, release() at the end."""
    directory: str
    storage: Storage = Storage()
    ttl: float = TTL_S
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    renewed: float = float("-inf")  # time.monotonic() of the last write

    def acquire(self, take_over: bool = False) -> str | None:
        """Claim the directory; if the previous holder is gone, clear what its unfinished saves
        left (checkpoint.sweep). Returns a line to log when it replaced another run's lease.
        LeaseHeld, naming the owner, if another live run holds it and not `take_over`;
        CheckpointError if the storage fails."""
        def decide(holder: Holder | None) -> None:
            if holder is not None and holder.owner != self.owner and not holder.gone() and not take_over:
                raise LeaseHeld(f"{self.directory} is in use by {holder} ({LEASE}); wait for it to end "
                                "or to expire, or pass --resume to take it over")
        try:
            holder = self._update(decide, None)
        except (OSError, DataError, ValueError) as e:
            raise CheckpointError(f"cannot claim {self.directory} ({LEASE}): {e}") from None
        if holder is not None and holder.owner != self.owner and not holder.gone():
            return f"took over {self.directory} from {holder}; its unfinished saves, if any, are left"
        cleared = checkpoint.sweep(self.directory, self.storage)
        if holder is not None and holder.owner != self.owner:
            return f"took over {self.directory} from {holder}" + (f"; cleared {len(cleared)} unfinished "
                                                                  "file(s) of its saves" if cleared else "")
        return None

    def renew(self, budget: float | None = None) -> None:
        """Extend the claim by ttl from now; LeaseLost if another run holds it. Storage errors
        (after retrying transient ones for `budget` seconds, None: retry.READ_S) are raised as they are."""
        def decide(holder: Holder | None) -> None:
            if holder is not None and holder.owner != self.owner:
                raise LeaseLost(f"{self.directory} was taken over by {holder}; this run stops")
        self._update(decide, budget)

    def keep_alive(self) -> None:
        """Renew once a third of the ttl has passed since the last time; a storage error only
        postpones it by a tenth of the ttl (LeaseLost is raised)."""
        if time.monotonic() - self.renewed < self.ttl / 3:
            return
        try:
            self.renew(budget=0)
        except (OSError, DataError, ValueError):
            self.renewed = time.monotonic() - self.ttl / 3 + self.ttl / 10

    def release(self) -> None:
        """Give the directory up, if this run still holds it; if the storage fails, the lease
        is left to expire."""
        fs, root = filesystem(self.directory, self.storage)
        path = f"{root}/{LEASE}"
        try:
            with self._locked(fs, root):
                holder, _ = retrying(lambda: _read(fs, path))
                if holder is not None and holder.owner == self.owner:
                    retrying(lambda: fs.rm(path))
        except (OSError, DataError):
            pass

    def _update(self, decide, budget: float | None) -> Holder | None:
        """Read the lease, let decide() raise if this run may not hold it, write this run's: the
        holder read. A conditional write that finds the lease changed meanwhile starts again."""
        fs, root = filesystem(self.directory, self.storage)
        path = f"{root}/{LEASE}"
        while True:
            with self._locked(fs, root):
                holder, etag = retrying(lambda: _read(fs, path), budget)
                decide(holder)
                renewed = time.monotonic()
                record = json.dumps(asdict(Holder(self.owner, socket.gethostname(), os.getpid(),
                                                  time.time() + self.ttl))).encode()
                try:
                    retrying(lambda: _write(fs, root, path, record, etag), budget)
                except _Conflict:
                    continue
            self.renewed = renewed
            return holder

    @staticmethod
    @contextlib.contextmanager
    def _locked(fs, root: str) -> Iterator[None]:
        """Local disk: hold flock() of the lock file; S3: nothing (the writes are conditional)."""
        if not isinstance(fs, LocalFileSystem):
            yield
            return
        os.makedirs(root, exist_ok=True)
        with open(f"{root}/{LOCK}", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield


def _read(fs, path: str) -> tuple[Holder | None, str | None]:
    """The lease at `path` (None if there is none) and its S3 ETag (None locally)."""
    try:
        if isinstance(fs, LocalFileSystem):
            with open(path, "rb") as f:
                payload, etag = f.read(), None
        else:  # the ETag first: content newer than it makes the conditional write fail, never wrong
            fs.invalidate_cache(path)
            etag = fs.info(path)["ETag"]
            payload = fs.cat_file(path)
    except FileNotFoundError:
        return None, None
    try:
        return Holder(**json.loads(payload)), etag
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a lease ({type(e).__name__}: {e}); delete it if no run "
                              "uses the directory") from None


def _write(fs, root: str, path: str, payload: bytes, etag: str | None) -> None:
    """Replace the lease read with ETag `etag` (None: there was none) by `payload`; _Conflict if
    it changed meanwhile (S3; locally the lock excludes that)."""
    if isinstance(fs, LocalFileSystem):
        checkpoint.put_local(root, LEASE, payload)
        return
    try:
        fs.pipe_file(path, payload, **({"IfMatch": etag} if etag else {"mode": "create"}))
    except OSError as e:
        cause = e.__cause__
        code = cause.response["Error"].get("Code") if isinstance(cause, boto.ClientError) else None
        if isinstance(e, FileExistsError) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise _Conflict from None
        raise
