"""Retrying storage calls through transient faults: an S3 endpoint down, a connection cut mid-read.

Only errors that a later attempt can cure are retried (connection refused or reset, timeouts,
a payload cut short, a server answering 5xx); anything else (not found, access denied, bad
data) is raised at once. After the time budget, GaveUp (a ConnectionError, so the callers'
handling of I/O errors names the object) says what failed, how often and for how long.
s3fs retries a request itself before it raises (measured against a stopped SeaweedFS: 4-7 s
for a refused connection, 11 s for exists()), so one try can outlast a short budget.
"""
from __future__ import annotations

import errno
import time
from typing import Callable, TypeVar

import aiohttp
import botocore.exceptions as boto
import urllib3.exceptions

T = TypeVar("T")

READ_S = 60.0  # how long reads (resume, shard loads, listings) keep retrying

TRANSIENT_TYPES = (boto.EndpointConnectionError, boto.ConnectionClosedError, boto.ReadTimeoutError,
                   boto.ConnectTimeoutError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                   aiohttp.ClientConnectorError, urllib3.exceptions.HTTPError, TimeoutError)
TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


class GaveUp(ConnectionError):
    """A call still failed with transient errors when its time budget ran out."""


def is_transient(e: BaseException) -> bool:
    """Whether `e`, or an error it was raised from, is one that a later attempt may not meet."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, GaveUp):
            return False
        if isinstance(e, TRANSIENT_TYPES) or isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return True
        status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) \
            if isinstance(e, boto.ClientError) else 0
        if status >= 500:  # a server starting up or overloaded: 500, 503 SlowDown
            return True
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return False


def retrying(call: Callable[[], T], budget: float | None = None, first_wait: float = 0.5, max_wait: float = 8.0) -> T:
    """call(), called again after each transient error, waits doubling from `first_wait` up to
    `max_wait`, until `budget` seconds (None: READ_S) have passed since the first try; then GaveUp."""
    budget = READ_S if budget is None else budget
    start, wait, tries = time.monotonic(), first_wait, 0
    while True:
        tries += 1
        try:
            return call()
        except Exception as e:
            if not is_transient(e):
                raise
            elapsed = time.monotonic() - start
            if elapsed + wait > budget:
                detail = " ".join(str(e).split()) or type(e).__name__
                raise GaveUp(f"{type(e).__name__}: {detail} (still failing after {tries} "
                             f"tr{'y' if tries == 1 else 'ies'} in {elapsed:.0f} s)") from None
            time.sleep(wait)
            wait = min(2 * wait, max_wait)
