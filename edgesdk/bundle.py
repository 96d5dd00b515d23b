"""Write bundles: manifest with the sha256 of every file, and all-or-nothing output folders.

Everything is written to a temporary folder beside the destination, under an exclusive
lock, and moved into place only when complete; on any error or caught signal the
temporary folder is removed and the destination is left as it was.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .runtime.bundle import MANIFEST, SCHEMA_VERSION, file_sha256

__all__ = ["write_manifest", "write_arrays", "write_npz", "staged_output"]


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record size and sha256 of every file in ``folder``, then write manifest.json."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    manifest = {"schema_version": SCHEMA_VERSION, **manifest, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays as safetensors: byte-reproducible and never unpickled."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    os.chmod(path, 0o666 & ~_umask())


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays as an .npz any numpy reads (``allow_pickle=False``), byte-reproducible:
    ``np.savez`` stamps each member with the current time, this writes a fixed one."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, value in arrays.items():
            with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _lock(out: Path) -> Iterator[None]:
    lock_path = out.parent / f".{out.name}.lock"
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"another edgesdk conversion is writing {out} right now; wait for it or choose another --out"
            ) from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
    finally:
        os.close(fd)


@contextmanager
def staged_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder that replaces ``out`` only if the block completes."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output folder {out} already exists and is not empty: pass --overwrite to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with _lock(out):
            for stale in out.parent.glob(f".{out.name}.[to][ml][pd]-*"):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
            os.chmod(staging, 0o777 & ~_umask())
            try:
                yield staging
                _replace(staging, out)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        raise InputError(f"cannot write {out}: {e.strerror or e} (check permissions and free space)") from e


def _replace(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "previous")
    os.rename(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
