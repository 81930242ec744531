"""systemd readiness, status and watchdog notification, without python-systemd.

`sd_notify` speaks the protocol of sd_notify(3): one datagram of ``KEY=VALUE`` lines to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading
'@'). Outside systemd the variable is unset and every call is a no-op. A send never blocks and
never raises: a service must not stall or die because its supervisor is slow or gone.

`Watchdog` pets systemd only while frames flow: the frame loop calls `frame_delivered()` per
frame and `tick(now)` often (once per frame or from a timer, with a monotonic clock), and
``WATCHDOG=1`` goes out at most every half ``WatchdogSec`` and only if a frame was delivered
since the previous one. A pipeline stuck in a decoder or an encoder therefore stops the pings,
and systemd restarts the service (``Restart=on-failure``) after ``WatchdogSec``.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Callable, Mapping

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. vsock addresses of newer systemd: not supported here


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (one or more ``KEY=VALUE`` lines) to systemd; True when it was sent.
    False, silently, when not run by systemd; False with a debug log when sending fails."""
    env = os.environ if environ is None else environ
    value = env.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = _socket_address(value)
    if address is None:
        log.debug("sd_notify: unsupported NOTIFY_SOCKET %r", value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # a full receive queue drops this message, never waits
            sock.sendto(state.encode("utf-8"), address)
        return True
    except OSError as e:
        log.debug("sd_notify(%r) failed: %s", state, e)
        return False


def notify_ready(status: str | None = None) -> bool:
    """``READY=1`` (with a status line): startup is over; `Type=notify` units become active."""
    return sd_notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))


def notify_status(status: str) -> bool:
    """``STATUS=...``: the line `systemctl status` shows."""
    return sd_notify(f"STATUS={_one_line(status)}")


def notify_stopping(status: str | None = None) -> bool:
    """``STOPPING=1``: shutting down (finalising recordings); systemd then waits TimeoutStopSec."""
    return sd_notify("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())  # a newline would start a new KEY=VALUE assignment


def watchdog_interval(environ: Mapping[str, str] | None = None,
                      pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    reads it: None when unset, invalid, zero, or when ``$WATCHDOG_PID`` names another process
    (the variables were inherited by a child, which must not ping for its parent)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``timeout / 2`` seconds while frames are delivered.

    ``timeout``: systemd's WatchdogSec in seconds, or None for a watchdog that never sends
    (not under systemd, or no WatchdogSec). ``send`` is `sd_notify` unless a test injects one.
    `frame_delivered` may be called from any thread (it sets one flag); `tick` from one thread.
    """

    def __init__(self, timeout: float | None,
                 send: Callable[[str], object] = sd_notify) -> None:
        self.timeout = timeout
        self.ping_interval = timeout / 2 if timeout else None
        self._send = send
        self._frame_since_ping = False
        self._last_ping: float | None = None  # None: the first frame is reported at once
        self.pings = 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, pid: int | None = None,
                         send: Callable[[str], object] = sd_notify) -> "Watchdog":
        return cls(watchdog_interval(environ, pid), send)

    @property
    def enabled(self) -> bool:
        return self.ping_interval is not None

    def frame_delivered(self) -> None:
        self._frame_since_ping = True

    def tick(self, now: float) -> bool:
        """Ping if a frame came since the last ping and half the timeout has passed;
        True when a ping was sent. ``now``: seconds on a monotonic clock."""
        if self.ping_interval is None or not self._frame_since_ping:
            return False
        if self._last_ping is not None and now - self._last_ping < self.ping_interval:
            return False
        self._frame_since_ping = False
        self._last_ping = now
        self.pings += 1
        self._send("WATCHDOG=1")
        return True
