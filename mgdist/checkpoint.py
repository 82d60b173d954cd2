"""Checkpoints: arrays in an .npz (read without pickle) plus a JSON manifest, local or on S3.

A checkpoint is current once its manifest exists: the .npz (named after its checksum) is
written first, the manifest last, each atomically (local: temp file fsynced, renamed, the
directory fsynced; S3: one PUT per object). A reader never sees half a checkpoint, and a
crash mid-save leaves the previous ones intact. Storage calls retry transient errors
(mgdist/retry.py); a save that still fails raises SaveFailed, which a trainer may log and
survive. One run at a time owns a directory (mgdist/lease.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import warnings
from typing import Collection

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from mgdist.data import Storage, filesystem
from mgdist.errors import CheckpointError, DataError, SaveFailed, Unreachable
from mgdist.retry import GaveUp, retrying

MANIFEST = re.compile(r"ckpt-(\d{9})\.json$")
ARRAYS = re.compile(r"ckpt-(\d{9})-[0-9a-f]{16}\.npz$")
PARTIAL = re.compile(r"\.ckpt-.*\.tmp-(\d+)$")  # a local write in progress, or cut short by a kill
DIGEST = re.compile(r"[0-9a-f]{64}$")
SAVE_S = 60.0  # how long a save retries by default
FINAL_SAVE_S = 600.0  # ... and the last one of a run, which nothing later can make up for


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def _put(fs, root: str, name: str, payload: bytes) -> None:
    """Write one file so that readers see all of it or nothing."""
    if isinstance(fs, LocalFileSystem):
        put_local(root, name, payload)
    else:  # S3: an object appears whole, with its one PUT
        fs.pipe_file(_join(root, name), payload)


def put_local(root: str, name: str, payload: bytes) -> None:
    """Write a local file whole or not at all: a temp file, fsynced, renamed, the directory fsynced."""
    os.makedirs(root, exist_ok=True)
    tmp = _join(root, f".{name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _join(root, name))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    directory = os.open(root, os.O_RDONLY)
    try:  # the rename itself must reach the disk before the file counts as saved
        os.fsync(directory)
    finally:
        os.close(directory)


def _names(fs, root: str) -> list[str]:
    return [os.path.basename(p) for p in retrying(lambda: fs.ls(root, detail=False) if fs.exists(root) else [])]


def steps(directory: str, storage: Storage = Storage()) -> list[int]:
    """Steps of the checkpoints whose manifests are in `directory`, oldest first."""
    fs, root = filesystem(directory, storage)
    try:
        names = _names(fs, root)
    except (OSError, DataError) as e:
        raise CheckpointError(f"cannot list checkpoints in {directory}: {e}") from None
    return sorted(int(m[1]) for m in map(MANIFEST.match, names) if m)


def own_arrays(manifest: dict, step: int, where: str) -> str:
    """The .npz file name a manifest of `step` names, which must be that checkpoint's own:
    ckpt-<step>-<its checksum>.npz in the same directory (no other step's, no path)."""
    digest = manifest.get("sha256")
    expected = f"ckpt-{step:09d}-{digest[:16]}.npz" if isinstance(digest, str) and DIGEST.match(digest) else None
    if manifest.get("step") != step or expected is None or manifest.get("npz") != expected:
        raise CheckpointError(f"{where}: names arrays {manifest.get('npz')!r} for step {manifest.get('step')!r}, "
                              f"not this checkpoint's own (ckpt-{step:09d}-<checksum>.npz)")
    return expected


def _named_arrays(fs, root: str, name: str) -> str | None:
    """The arrays file that manifest `name` names, if it is there, readable and names its own."""
    step = int(MANIFEST.match(name)[1])
    try:
        manifest = json.loads(retrying(lambda: fs.cat_file(_join(root, name))))
        return own_arrays(manifest, step, name) if isinstance(manifest, dict) else None
    except FileNotFoundError:
        return None
    except (ValueError, CheckpointError):  # not JSON, or names something else: names nothing of its own
        return None


def save(directory: str, step: int, arrays: dict[str, np.ndarray], meta: dict, keep: int = 3,
         storage: Storage = Storage(), lease=None, retry_s: float = SAVE_S, protect: Collection[int] = ()) -> str:
    """Write checkpoint `step` (arrays + JSON-able meta); keep only the newest `keep`, and those of
    the steps in `protect` (e.g. the best one). Returns its manifest path.

    With a lease (mgdist/lease.py), renews it first: LeaseLost if another run has taken the
    directory over. Transient storage errors are retried for about `retry_s` seconds; then,
    or on any other error, SaveFailed."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    npz = f"ckpt-{step:09d}-{digest[:16]}.npz"
    manifest = {"format": 1, "step": step, "npz": npz, "sha256": digest,
                "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()}, **meta}
    name = f"ckpt-{step:09d}.json"
    fs, root = filesystem(directory, storage)  # one for the whole save: a new S3 client costs ~0.4 s

    def write() -> None:
        _put(fs, root, npz, payload)
        replaced = _named_arrays(fs, root, name)  # a checkpoint of this step saved before: its arrays go
        _put(fs, root, name, json.dumps(manifest, indent=1).encode())
        _prune(fs, root, step, npz, keep, replaced, protect)

    deadline = time.monotonic() + retry_s
    try:
        if lease is not None:
            lease.renew(budget=retry_s)
        retrying(write, budget=max(0.0, deadline - time.monotonic()))
    except (OSError, DataError, ValueError) as e:  # not LeaseLost: this run no longer owns the directory
        raise SaveFailed(f"cannot write checkpoint {step} to {directory}: {e}") from None
    return _join(directory, name)


def _prune(fs, root: str, step: int, npz: str, keep: int, replaced: str | None = None,
           protect: Collection[int] = ()) -> None:
    """After saving `step`: delete the checkpoints older than the newest `keep` up to it (keep <= 0:
    keep all) but those of the steps in `protect`, and the arrays `replaced` of the checkpoint of
    `step` this save replaced. Goes by
    file names: a corrupt old checkpoint goes like any other, and so do .npz files of the older
    steps deleted (saves that never finished). Newer checkpoints (left by a run that was resumed
    from an older one), temp files and other .npz files of `step` are left alone: they may be
    another process's writes in progress (sweep() clears them once no other run holds the
    directory). Manifests go first, so a kill mid-prune leaves at worst an .npz that no manifest
    names, never the reverse."""
    names = _names(fs, root)
    kept = sorted(int(m[1]) for m in map(MANIFEST.match, names) if m and int(m[1]) <= step)
    kept = (kept[-keep:] if keep > 0 else kept) + list(protect)
    for name in sorted(names, key=lambda n: n.endswith(".npz")):
        m = MANIFEST.match(name) or ARRAYS.match(name)
        if m and int(m[1]) < step and int(m[1]) not in kept or name == replaced != npz:
            fs.rm(_join(root, name))


def sweep(directory: str, storage: Storage = Storage()) -> list[str]:
    """Delete what unfinished saves left in `directory` (temp files, .npz files that no manifest
    names) and return their names. Only for a run that owns the directory after its previous
    holder is known to be gone: the files of a save in progress look just the same."""
    fs, root = filesystem(directory, storage)
    try:
        names = _names(fs, root)
        named = {_named_arrays(fs, root, n) for n in names if MANIFEST.match(n)}
        debris = [n for n in names if PARTIAL.match(n) or ARRAYS.match(n) and n not in named]
        for name in debris:
            retrying(lambda: fs.rm(_join(root, name)))
    except (OSError, DataError) as e:
        raise CheckpointError(f"cannot clear unfinished saves from {directory}: {e}") from None
    return debris


def load(directory: str, step: int, storage: Storage = Storage()) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and manifest of checkpoint `step`, verified against the manifest's checksum, shapes and dtypes."""
    name = f"ckpt-{step:09d}.json"
    where, (fs, root) = _join(directory, name), filesystem(directory, storage)
    try:
        manifest = json.loads(retrying(lambda: fs.cat_file(_join(root, name))))
        npz = own_arrays(manifest, step, where)
        payload = retrying(lambda: fs.cat_file(_join(root, npz)))
        if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
            raise CheckpointError(f"{where}: checksum mismatch (truncated or corrupt .npz)")
        with np.load(io.BytesIO(payload), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        for k, spec in manifest["arrays"].items():
            a = arrays.get(k)
            if a is None or list(a.shape) != spec["shape"] or str(a.dtype) != spec["dtype"]:
                raise CheckpointError(f"{where}: array {k!r} does not match its manifest {spec}")
    except CheckpointError:
        raise
    except GaveUp as e:
        raise Unreachable(f"{where}: unreachable: {e}") from None
    except (OSError, DataError, ValueError, KeyError, TypeError, AttributeError) as e:  # JSON, zip, npz: ValueError
        raise CheckpointError(f"{where}: unreadable: {type(e).__name__}: {e}") from None
    return arrays, manifest


def load_latest(directory: str, storage: Storage = Storage()) -> tuple[dict[str, np.ndarray], dict] | None:
    """The newest checkpoint that loads and verifies, skipping broken ones with a warning; None if
    there is none; CheckpointError if there are some but none loads (never start over silently),
    Unreachable if the storage still fails after retrying (never fall back to an older one)."""
    found, errors = steps(directory, storage), []
    for step in reversed(found):
        try:
            return load(directory, step, storage)
        except Unreachable:  # not broken, only out of reach: an older one is no substitute
            raise
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint: {e}", stacklevel=2)
            errors.append(e)
    if errors:
        raise CheckpointError(f"none of the {len(found)} checkpoints in {directory} can be used; newest: {errors[0]}")
    return None
