"""Write bundles: manifest with the sha256 of every file, and all-or-nothing output folders.

Everything is written to a temporary folder beside the destination, under an exclusive
lock, and moved into place only when complete; on any error or caught signal the
temporary folder is removed and the destination is left as it was.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import signals
from .errors import InputError
from .runtime.bundle import MANIFEST, SCHEMA_VERSION, file_sha256

__all__ = ["write_manifest", "write_array_files", "write_npz", "staged_output", "check_output", "MARKER"]


def write_manifest(folder: Path, manifest: dict[str, Any], purposes: dict[str, str] | None = None) -> dict[str, Any]:
    """Record size, sha256 and purpose (from ``purposes``, by file name) of every file in ``folder``,
    then write manifest.json."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        if purposes and rel in purposes:
            files[rel]["purpose"] = purposes[rel]
    manifest = {"schema_version": SCHEMA_VERSION, **manifest, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


_SAFETENSORS_DTYPES = {"float32": "F32", "float64": "F64", "int64": "I64", "int32": "I32", "uint8": "U8"}


def write_array_files(path: Path, arrays: dict[str, Any]) -> None:
    """Save ``ArrayFile``s (``edgesdk.verification``) as one safetensors file, copied a chunk at a
    time (the safetensors package writes only arrays held in memory): an 8-byte header length,
    the JSON header (names in sorted order, padded to 8 bytes), then each array's bytes."""
    header, offset = {}, 0
    for name in sorted(arrays):
        a = arrays[name]
        size = len(a) * int(np.prod(a.row_shape, dtype=np.int64)) * a.dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[a.dtype.name], "shape": [len(a), *a.row_shape],
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in sorted(arrays):
            for _, rows in arrays[name].chunks():
                f.write(rows.tobytes())
    os.chmod(path, 0o666 & ~_umask())


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays as an .npz any numpy reads (``allow_pickle=False``), byte-reproducible:
    ``np.savez`` stamps each member with the current time, this writes a fixed one."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, value in arrays.items():
            with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, np.asarray(value, order="C"), allow_pickle=False)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


MARKER = ".edgesdk-output"


def check_output(out: Path, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> None:
    """Refuse an output folder that would destroy something: one that is or holds an input, a
    file, or a non-empty folder that edgesdk did not write (no marker) or that needs ``overwrite``."""
    target = out.resolve()
    for given in inputs:
        p = Path(given).resolve()
        if p == target or p.is_relative_to(target):
            raise InputError(f"output folder {out} {'is' if p == target else 'contains'} the input {given}: replacing "
                             "it would delete your input; choose an output folder outside your model and data")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise InputError(f"output folder {out} is not empty and was not written by edgesdk (it has no {MARKER} "
                             "marker): choose a new or empty folder; edgesdk only replaces folders it wrote")
        if not overwrite:
            raise InputError(f"output folder {out} already exists: pass --overwrite to replace it")


@contextmanager
def staged_output(out: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty staging folder that replaces ``out`` only if the block completes.

    ``inputs`` (model folder, data files) may not lie inside ``out``. The replacement swaps the
    two folders atomically where the OS can (renameat2 RENAME_EXCHANGE on Linux); elsewhere a
    kill between the two renames leaves the previous output beside it, and the next run puts
    it back instead of deleting it.
    """
    out = Path(out).absolute()
    try:
        check_output(out, inputs, overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        with _lock(out) as still_held:
            _recover(out)
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
            os.chmod(staging, 0o777 & ~_umask())
            try:
                yield staging
                signals.check()  # an interrupt a library swallowed still means: write nothing
                still_held()
                (staging / MARKER).write_text("written by edgesdk; replaced by edgesdk --overwrite\n", encoding="utf-8")
                _replace(staging, out)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        raise InputError(f"cannot write {out}: {e.strerror or e} (check permissions and free space)") from e


@contextmanager
def _lock(out: Path) -> Iterator[Callable[[], None]]:
    """An exclusive lock on ``out`` (filelock: fcntl on Unix, msvcrt on Windows); yields a check
    that raises when the lock file was removed or replaced while held (another run may then be
    writing), called before the output is swapped. The lock file is removed on release."""
    import filelock

    lock_path = out.parent / f".{out.name}.lock"
    lock = filelock.FileLock(lock_path, timeout=0, is_singleton=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise InputError(f"another edgesdk conversion is writing {out} right now; wait for it or choose another "
                         "--out") from None
    held = os.stat(lock_path).st_ino

    def ours() -> bool:
        return lock_path.exists() and os.stat(lock_path).st_ino == held

    def still_held() -> None:
        if not ours():
            raise InputError(f"the lock file {lock_path} was removed while this conversion held it, so another "
                             f"run may be writing {out}; nothing was replaced: run again")

    try:
        yield still_held
    finally:
        if ours():
            lock_path.unlink()
        lock.release()


def _recover(out: Path) -> None:
    """Clean up after a killed run: staging folders go; a previous output left beside a missing one
    is put back, never deleted."""
    name = glob.escape(out.name)
    for stale in out.parent.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in sorted(out.parent.glob(f".{name}.old-*")):
        if not out.exists():
            os.rename(old, out)
        else:
            shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
    elif _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # the previous output, now that the new one is in place
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rmdir(old)
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
