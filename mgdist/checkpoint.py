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
from fsspec.implementations.local import LocalFileSystem

from mgdist.data import Storage, filesystem
from mgdist.errors import CheckpointError, DataError

MANIFEST = re.compile(r"ckpt-(\d{9})\.json$")
ARRAYS = re.compile(r"ckpt-(\d{9})-[0-9a-f]{16}\.npz$")
PARTIAL = re.compile(r"\.ckpt-.*\.tmp-(\d+)$")  # a local write in progress, or cut short by a kill


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def _put(fs, root: str, name: str, payload: bytes) -> None:
    """Write one file so that readers see all of it or nothing."""
    if not isinstance(fs, LocalFileSystem):  # S3: an object appears whole, with its one PUT
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
    fs, root = filesystem(directory, storage)  # one for the whole save: a new S3 client costs ~0.4 s
    try:
        _put(fs, root, npz, payload)
        _put(fs, root, name, json.dumps(manifest, indent=1).encode())
        _prune(fs, root, step, npz, keep)
    except (OSError, DataError, ValueError) as e:
        raise CheckpointError(f"cannot write checkpoint {step} to {directory}: {e}") from None
    return _join(directory, name)


def _prune(fs, root: str, step: int, npz: str, keep: int) -> None:
    """After saving `step`: delete the checkpoints older than the newest `keep` up to it (keep <= 0:
    keep all), the .npz files of older steps that no manifest names (a save that never finished), and
    any earlier .npz of `step`. Goes by file names only, so a corrupt checkpoint goes like any other;
    newer ones (left by a run that was resumed from an older one) are left alone. Manifests go
    first, so a kill mid-prune leaves at worst an .npz that no manifest names, never the reverse.
    Partial files of other processes (killed mid-write) go too."""
    names = [os.path.basename(p) for p in fs.ls(root, detail=False)]
    kept = sorted(int(m[1]) for m in map(MANIFEST.match, names) if m and int(m[1]) <= step)
    kept = kept[-keep:] if keep > 0 else kept
    for name in sorted(names, key=lambda n: n.endswith(".npz")):
        m = MANIFEST.match(name) or ARRAYS.match(name)
        s = int(m[1]) if m else None
        partial = PARTIAL.match(name)
        if (m and (s < step and s not in kept or s == step and name.endswith(".npz") and name != npz)
                or partial and int(partial[1]) != os.getpid()):
            fs.rm(_join(root, name))


def load(directory: str, step: int, storage: Storage = Storage()) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and manifest of checkpoint `step`, verified against the manifest's checksum, shapes and dtypes."""
    name = f"ckpt-{step:09d}.json"
    where, (fs, root) = _join(directory, name), filesystem(directory, storage)
    try:
        with fs.open(_join(root, name), "rb") as f:
            manifest = json.loads(f.read())
        with fs.open(_join(root, manifest["npz"]), "rb") as f:
            payload = f.read()
        if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
            raise CheckpointError(f"{where}: checksum mismatch (truncated or corrupt .npz)")
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        for k, spec in manifest["arrays"].items():
            a = arrays.get(k)
            if a is None or list(a.shape) != spec["shape"] or str(a.dtype) != spec["dtype"]:
                raise CheckpointError(f"{where}: array {k!r} does not match its manifest {spec}")
    except CheckpointError:
        raise
    except (OSError, DataError, ValueError, KeyError, TypeError, AttributeError) as e:  # JSON, zip, npz: ValueError
        raise CheckpointError(f"{where}: unreadable: {type(e).__name__}: {e}") from None
    return arrays, manifest


def load_latest(directory: str, storage: Storage = Storage()) -> tuple[dict[str, np.ndarray], dict] | None:
    """The newest checkpoint that loads and verifies, skipping broken ones with a warning; None if
    there is none; CheckpointError if there are some but none loads (never start over silently)."""
    found, errors = steps(directory, storage), []
    for step in reversed(found):
        try:
            return load(directory, step, storage)
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint: {e}", stacklevel=2)
            errors.append(e)
    if errors:
        raise CheckpointError(f"none of the {len(found)} checkpoints in {directory} can be used; newest: {errors[0]}")
    return None
