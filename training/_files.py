"""Writing a file whole or not at all; a lock file one process at a time holds."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable


def write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """Have `write` fill a temporary file beside `path`, then rename it over `path`: a reader (another
    process resuming or reusing a run, say) sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


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
