"""Writing a file whole or not at all; a lock file one process at a time holds, and the lock of a run on its
artifact path (OUT.lock) built on it."""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
from pathlib import Path
from typing import Any, Callable


def write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """Have `write` fill a temporary file beside `path`, then rename it over `path`: a reader (another
    process resuming or reusing a run, say) sees the old file or the new one, never half of one. Where writing
    fails (a full disk), the temporary file is removed and the error raised."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):   # the error that stopped the write is the one to tell
            tmp.unlink(missing_ok=True)
        raise


def claim_lock(lock: Path) -> int | None:
    """An open descriptor holding the file `lock` exclusively (made when missing), which then names this process's
    id for whoever looks; None while another process holds it. The kernel drops an flock when its holder exits,
    killed or not, so a dead process never blocks the next."""
    fd = os.open(lock, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class RunLockedError(ValueError):
    """Another live process is training into the same artifact path (it holds OUT.lock)."""


def _lock_path(out: str | os.PathLike) -> Path:
    return Path(out).with_name(Path(out).name + ".lock")


def lock_run(out: str | os.PathLike) -> int:
    """Take the lock on artifact path `out` (an flock on OUT.lock beside it, naming this process's id): an open
    descriptor to give to unlock_run. RunLockedError naming the holder's process id when another process holds
    it. The kernel drops an flock when its holder exits, killed or not, so a dead run never blocks the next."""
    lock = _lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = claim_lock(lock)
        if fd is None:
            try:
                pid = lock.read_text(errors="replace")[:32].strip()
            except OSError:
                pid = ""
            raise RunLockedError(f"another run{f' (pid {pid})' if pid else ''} is writing {out} (it holds {lock}): "
                                 "wait for it to end, or give another --out") from None
        try:   # the holder removes the file as it ends: a descriptor opened before that locks a stale file
            current = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


def unlock_run(out: str | os.PathLike, fd: int) -> None:
    """Give back the lock lock_run took on `out`, removing its file."""
    _lock_path(out).unlink(missing_ok=True)
    os.close(fd)


def check_run(out: str | os.PathLike, stop_after: int | None = None) -> None:
    """ValueError, before any work, for an artifact path that cannot be written (a folder there) or a
    `stop_after` of no epochs."""
    if Path(out).is_dir():
        raise ValueError(f"{out} is a folder; the artifact is a file (give a name ending in .safetensors)")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"stop_after must be at least 1 epoch, got {stop_after!r}")


def json_nulls(value: Any) -> Any:
    """`value` (dicts, lists, numbers, ...) with each float that is not finite as None: JSON's null, as the artifact's
    metadata writes it. A metric with nothing to score (NaN: a test split with no two images of any class) would
    otherwise be written as a bare NaN, which is not JSON (strict parsers refuse the file)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_nulls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_nulls(v) for v in value]
    return value
