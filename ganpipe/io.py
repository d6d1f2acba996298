"""Atomic writes: every output appears whole or not at all (temp file, then rename).

A disk (or quota) that fills up mid-write becomes a DiskFullError naming the file: the previous
output stays as it was and the partial one is removed, whichever library did the writing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.errors import ConfigError, DataError, DiskFullError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Some writers drop the errno and keep only the text: h5py (inside Keras's .keras files) raises
# OSError(None, "... errno = 28, error message = 'No space left on device' ...").
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, innermost last."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` or one in its chain is a full disk or quota: libraries (Keras, zipfile,
    Pillow) often re-raise the OSError as something else."""
    return any(
        (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS)
        or any(text in str(e) for text in DISK_FULL_TEXTS)
        for e in _chain(exc)
    )


def _disk_full(output: Path, written: Path, existed: bool) -> DiskFullError:
    kept = f"the previous {output} was kept" if existed else f"nothing was written to {output}"
    return DiskFullError(
        f"disk full (no space left on device) while writing {written}; {kept} and the partial "
        "write removed. Free some space and rerun.",
        path=str(written),
    )


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    `suffix` keeps an extension that a writer insists on (Keras wants `.keras`, NumPy `.npz`).
    Running out of disk space raises DiskFullError; `path` is then as it was.
    """
    path = Path(path)
    existed = path.exists()
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent
        )
        os.close(fd)
        tmp_path = Path(tmp)
        # mkstemp makes it 0600; outputs should look like open()'s.
        tmp_path.chmod(0o666 & ~_umask())
        yield tmp_path
        os.replace(tmp_path, path)
    except DiskFullError:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise _disk_full(path, path, existed) from None
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` as a whole.

    Running out of disk space raises DiskFullError naming the file being written (the newest in
    the temporary directory when the writer did not say); `path` is then as it was.
    """
    path = Path(path)
    existed = path.exists()
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; outputs should look like any mkdir's
        yield tmp
        _swap_in(tmp, path)
    except DiskFullError as e:
        # A nested atomic writer named its file inside `tmp`: name it where it would have landed.
        inner = Path(e.path) if e.path else path
        raise _disk_full(path, _final_name(inner, tmp, path), existed) from None
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise _disk_full(path, _final_name(_written(e, tmp), tmp, path), existed) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, path: Path) -> None:
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old.{os.getpid()}")
        try:
            os.replace(path, old)
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EXDEV):
                raise
            raise ConfigError(
                f"{path}: cannot replace this directory ({e.strerror}): is it a mount point? "
                "Outputs are written beside it and swapped in whole; point at a directory inside "
                "the mount instead"
            ) from None
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)  # put the previous output back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _written(e: BaseException, tmp: Path | None) -> Path | None:
    """The file a failed write was writing: the OSError's filename, else the newest file in
    `tmp` (writers such as Pillow fail on close, with no filename). Timestamps tick coarsely, so
    ties go to the last name: numbered files (generate's PNGs) are written in name order."""
    for link in _chain(e):
        if isinstance(link, OSError) and link.filename:
            return Path(os.fsdecode(link.filename))
    if tmp is None or not tmp.exists():
        return None
    files = [p for p in tmp.rglob("*") if p.is_file()]
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name), default=None)


def _final_name(written: Path | None, tmp: Path | None, path: Path) -> Path:
    """`written` (a file inside the temporary `tmp`) as it would be named under `path`."""
    if written is None or tmp is None:
        return path
    try:
        return path / written.relative_to(tmp)
    except ValueError:
        return written


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def read_npz(
    path: str | os.PathLike[str], keys: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The arrays `keys` (default: all) of the .npz file at `path`, read in full, never
    unpickling anything (allow_pickle=False). DataError naming the file when it is damaged
    (truncated, overwritten, not a zip), a lone .npy array, lacks one of `keys` or holds pickled
    objects; callers add what to run to write it again."""
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - a damaged file raises many types (see _npz_damaged)
        raise _npz_damaged(path, e) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single .npy array, not a .npz archive of named arrays")
    with npz:
        keys = list(npz.files) if keys is None else keys
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise DataError(
                f"{path}: missing keys {', '.join(missing)} "
                f"(needs {', '.join(keys)}; has {', '.join(npz.files) or 'none'})"
            )
        arrays = {}
        for key in keys:
            try:
                arrays[key] = npz[key]
            except ValueError as e:
                if "allow_pickle" not in str(e):
                    raise _npz_damaged(path, e) from None
                raise DataError(
                    f"{path}: array {key!r} holds pickled Python objects, which ganpipe never "
                    "loads (allow_pickle=False); save it as a numeric array"
                ) from None
            except Exception as e:  # noqa: BLE001
                raise _npz_damaged(path, e) from None
    return arrays


def _npz_damaged(path: Path, e: Exception) -> DataError:
    """The DataError for a .npz that cannot be read. A truncated or overwritten zip raises
    BadZipFile, EOFError, zlib.error, NotImplementedError (a garbled compression method), KeyError
    or OSError; a file that starts like neither a zip nor a .npy is taken by np.load for a pickle,
    which allow_pickle=False refuses with a ValueError about pickled data."""
    if isinstance(e, ValueError) and "pickled" in str(e):
        reason = "it does not start like a zip archive"
    else:
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return DataError(f"{path} is damaged (not a readable .npz file: {reason})")


def keras_file_damage(path: Path, e: Exception) -> str:
    """Why the .keras file at `path` could not be loaded, for a "damaged" message. Keras reports
    a truncated file as "File not found"; whether it is still a zip tells what it is."""
    if not zipfile.is_zipfile(path):
        return "not a readable Keras file: truncated, or not a zip"
    return f"not a readable Keras file: {type(e).__name__}: {e}"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def arrays_sha256(*arrays: np.ndarray) -> str:
    """Content hash of arrays (dtype, shape and bytes): names a dataset version."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
