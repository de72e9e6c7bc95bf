"""Facts about this machine that several parts ask for: is a process alive, a free TCP port."""
from __future__ import annotations

import os
import socket


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (one of another user counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for a server this process is about to start)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
