"""Checkpoints: arrays in an .npz (read without pickle) plus a JSON manifest, local or on S3.

A checkpoint is current once its manifest exists: the .npz (named after its checksum) is
written first, the manifest last, each atomically (local: temp file + rename; S3: one PUT
per object). A reader never sees half a checkpoint, and a crash mid-save leaves the
previous ones intact.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings

import numpy as np

from mgdist.data import DataError, Storage, filesystem

MANIFEST = re.compile(r"ckpt-(\d{9})\.json$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, read, or used for this run; one line says which and why."""


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def _put(directory: str, name: str, payload: bytes, storage: Storage) -> None:
    """Write one file so that readers see all of it or nothing."""
    fs, root = filesystem(directory, storage)
    if directory.startswith("s3://"):
        fs.pipe_file(_join(root, name), payload)
        return
    os.makedirs(root, exist_ok=True)
    tmp = _join(root, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, _join(root, name))


def steps(directory: str, storage: Storage = Storage()) -> list[int]:
    """Steps of the checkpoints whose manifests are in `directory`, oldest first."""
    fs, root = filesystem(directory, storage)
    try:
        names = [os.path.basename(p) for p in fs.ls(root, detail=False)] if fs.exists(root) else []
    except (OSError, DataError) as e:
        raise CheckpointError(f"cannot list checkpoints in {directory}: {e}") from None
    return sorted(int(m[1]) for m in map(MANIFEST.match, names) if m)


def save(directory: str, step: int, arrays: dict[str, np.ndarray], meta: dict,
         keep: int = 3, storage: Storage = Storage()) -> str:
    """Write checkpoint `step` (arrays + JSON-able meta); keep only the newest `keep`. Returns its manifest path."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    npz = f"ckpt-{step:09d}-{digest[:16]}.npz"
    manifest = {"format": 1, "step": step, "npz": npz, "sha256": digest,
                "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()}, **meta}
    name = f"ckpt-{step:09d}.json"
    try:
        old = _read_manifest(directory, name, storage) if step in steps(directory, storage) else None
        _put(directory, npz, payload, storage)
        _put(directory, name, json.dumps(manifest, indent=1).encode(), storage)
        fs, root = filesystem(directory, storage)
        if old and old.get("npz") != npz:
            fs.rm(_join(root, old["npz"]))
        for s in steps(directory, storage)[:-keep] if keep > 0 else []:
            gone = _read_manifest(directory, f"ckpt-{s:09d}.json", storage)
            fs.rm(_join(root, f"ckpt-{s:09d}.json"))
            if gone.get("npz"):
                fs.rm(_join(root, gone["npz"]))
    except (OSError, DataError, ValueError) as e:
        raise CheckpointError(f"cannot write checkpoint {step} to {directory}: {e}") from None
    return _join(directory, name)


def _read_manifest(directory: str, name: str, storage: Storage) -> dict:
    fs, root = filesystem(directory, storage)
    with fs.open(_join(root, name), "rb") as f:
        return json.loads(f.read())


def load(directory: str, step: int, storage: Storage = Storage()) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and manifest of checkpoint `step`, verified against the manifest's checksum, shapes and dtypes."""
    where = _join(directory, f"ckpt-{step:09d}.json")
    try:
        manifest = _read_manifest(directory, f"ckpt-{step:09d}.json", storage)
        fs, root = filesystem(directory, storage)
        with fs.open(_join(root, manifest["npz"]), "rb") as f:
            payload = f.read()
        if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
            raise CheckpointError(f"{where}: checksum mismatch (truncated or corrupt .npz)")
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except CheckpointError:
        raise
    except (OSError, DataError, ValueError, KeyError) as e:  # JSON, zip and npz errors are ValueErrors
        raise CheckpointError(f"{where}: unreadable: {type(e).__name__}: {e}") from None
    for k, spec in manifest["arrays"].items():
        a = arrays.get(k)
        if a is None or list(a.shape) != spec["shape"] or str(a.dtype) != spec["dtype"]:
            raise CheckpointError(f"{where}: array {k!r} does not match its manifest {spec}")
    return arrays, manifest


def load_latest(directory: str, storage: Storage = Storage()) -> tuple[dict[str, np.ndarray], dict] | None:
    """The newest checkpoint that loads and verifies, skipping broken ones with a warning; None if none."""
    for step in reversed(steps(directory, storage)):
        try:
            return load(directory, step, storage)
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint: {e}", stacklevel=2)
    return None
