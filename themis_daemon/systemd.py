"""systemd integration in pure Python: sd_notify datagrams and socket activation.

The notify protocol is one datagram of `KEY=value` lines to the socket named by
$NOTIFY_SOCKET (a leading '@' means the Linux abstract namespace), so no library is needed.
"""

from __future__ import annotations

import os
import socket
import time
from typing import List, Optional

SD_LISTEN_FDS_START = 3


def notify(*lines: str, environ=os.environ) -> bool:
    """Send one notification; a no-op (False) when not started by systemd."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode("utf-8"))
        return True
    except OSError:
        return False


def monotonic_usec() -> int:
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)


def watchdog_interval(environ=os.environ) -> Optional[float]:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not requested."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def listen_sockets(environ=os.environ) -> List[socket.socket]:
    """Sockets passed by systemd socket activation ($LISTEN_FDS for this $LISTEN_PID).

    Only when $LISTEN_PID is this process (the variables are inherited by children, which
    must not take the sockets too); the variables are then removed from the environment.
    """
    pid, fds = environ.get("LISTEN_PID", ""), environ.get("LISTEN_FDS", "")
    if not pid.isdigit() or int(pid) != os.getpid() or not fds.isdigit() or int(fds) < 1:
        return []
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(fds)):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
        sock.setblocking(False)
        out.append(sock)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    return out
