"""Storage outages: this module's own SeaweedFS server really stopped and started again on the
same port and data. Saves, resume reads and shard loads ride out an outage within their
time budget, and past it fail with one line naming the object."""
import threading
import time

import numpy as np
import pytest

import s3server
from mgdist import checkpoint, data, retry
from mgdist.workloads import synthetic
from mgdist.errors import SaveFailed, Unreachable
from mgdist.data import DataError


def arrays(step: int) -> dict[str, np.ndarray]:
    return {"params": np.random.default_rng(step).standard_normal(1000, dtype=np.float32)}


def back_after(server: s3server.S3Server, seconds: float) -> threading.Thread:
    """Start the stopped server again `seconds` from now, in the background."""
    thread = threading.Thread(target=lambda: (time.sleep(seconds), s3server.start_again(server)))
    thread.start()
    return thread


def test_a_save_rides_out_an_outage_and_one_past_its_budget_fails_in_one_line(own_s3_env):
    d = f"s3://{own_s3_env.bucket}/outage-save"
    checkpoint.save(d, 1, arrays(1), {}, keep=3)
    s3server.stop(own_s3_env)
    t = time.monotonic()
    with pytest.raises(SaveFailed) as e:
        checkpoint.save(d, 2, arrays(2), {}, keep=3, retry_s=3)
    failed_in = time.monotonic() - t
    message = str(e.value)
    assert message.startswith(f"cannot write checkpoint 2 to {d}: EndpointConnectionError: ") and "\n" not in message
    assert "(still failing after " in message and failed_in < 20, (message, failed_in)
    thread = back_after(own_s3_env, 5)
    checkpoint.save(d, 2, arrays(2), {}, keep=3, retry_s=120)  # retries until the server is back
    thread.join()
    assert checkpoint.steps(d) == [1, 2]
    for step in (1, 2):
        np.testing.assert_array_equal(checkpoint.load(d, step)[0]["params"], arrays(step)["params"])


def during_outage(server: s3server.S3Server, *calls):
    """The results of `calls`, all started while the server is down, which comes back 5 s later."""
    s3server.stop(server)
    thread = back_after(server, 5)
    results = [None] * len(calls)
    workers = [threading.Thread(target=lambda i=i: results.__setitem__(i, calls[i]())) for i in range(len(calls))]
    for w in workers:
        w.start()
    for w in workers + [thread]:
        w.join()
    return results


def test_resume_reads_ride_out_an_outage_and_never_fall_back_to_an_older_checkpoint(own_s3_env, monkeypatch):
    d = f"s3://{own_s3_env.bucket}/outage-resume"
    for step in (1, 2):
        checkpoint.save(d, step, arrays(step), {}, keep=3)
    listed, loaded, (got, manifest) = during_outage(
        own_s3_env, lambda: checkpoint.steps(d), lambda: checkpoint.load(d, 1), lambda: checkpoint.load_latest(d))
    assert listed == [1, 2] and manifest["step"] == 2
    np.testing.assert_array_equal(loaded[0]["params"], arrays(1)["params"])
    np.testing.assert_array_equal(got["params"], arrays(2)["params"])

    s3server.stop(own_s3_env)
    monkeypatch.setattr(retry, "READ_S", 3.0)  # the budget of reads, so that this outage outlasts it
    with pytest.raises(Unreachable) as e:
        checkpoint.load(d, 2)
    assert str(e.value).startswith(f"{d}/ckpt-000000002.json: unreachable: EndpointConnectionError: ")
    assert "\n" not in str(e.value)


def test_shard_loads_and_discovery_ride_out_an_outage(own_s3_env, tmp_path, monkeypatch):
    uri = f"s3://{own_s3_env.bucket}/outage-data"
    synthetic.write(uri, rows=4000, features=4, files=2, row_group_rows=1000, seed=5, progress=False)
    ds = data.discover(uri)
    X, y, _ = data.load_shard(ds, [1, 2, 3])
    found, (X2, y2, _) = during_outage(own_s3_env, lambda: data.discover(uri), lambda: data.load_shard(ds, [1, 2, 3]))
    assert found == ds
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)

    s3server.stop(own_s3_env)
    monkeypatch.setattr(retry, "READ_S", 3.0)
    with pytest.raises(DataError) as e:
        data.load_shard(ds, [1])
    assert str(e.value).startswith(f"{ds.files[0].path}: EndpointConnectionError: ") and "\n" not in str(e.value)
    assert "(still failing after " in str(e.value)
