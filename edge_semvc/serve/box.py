"""Which box publishes under an MQTT topic prefix: `<prefix>/box`, retained, holds this box's
host, process, boot, start and cameras, and the service subscribes to it. What it hears there
is this box's own message, this box's from before a restart (the same host, its process
gone: the cameras it had and this one has not are cleared), or another box's (told: two
boxes on one prefix are one device to Home Assistant and mark each other offline).

Whatever arrives there is read as hostile: a JSON object of at most MOST_BYTES, names that are
topic levels, at most MOST_CAMERAS of them.
"""
from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

MOST_BYTES = 65536
MOST_CAMERAS = 1024
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # a new one at every boot (Linux)


def this_box(started: str) -> dict:
    """This process's identity (`id` tells its own message from every other)."""
    try:
        boot = BOOT_ID.read_text().strip()
    except OSError:
        boot = ""
    return {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "boot": boot, "started": started}


def read_box(payload: bytes) -> dict:
    """The message as a dict; {} when it is not a JSON object within the limits."""
    if len(payload) > MOST_BYTES:
        return {}
    try:
        box = json.loads(payload)
    except (ValueError, RecursionError):
        return {}
    return box if isinstance(box, dict) else {}


def judge(me: dict, box: dict, retained: bool) -> str:
    """"own", "before" (this box before a restart: retained, this host, its process not
    running now) or "other"."""
    if box.get("id") == me["id"]:
        return "own"
    if retained and box.get("host") == me["host"] and not _running(me, box):
        return "before"
    return "other"


def describe(box: dict) -> str:
    return (f"host {_text(box.get('host'))!r}, process {_text(box.get('pid'))}, started "
            f"{_text(box.get('started'))}")


def cameras_left(box: dict, now: set[str]) -> list[str]:
    """The cameras the box had and `now` has not (names that are topic levels only)."""
    names = box.get("cameras")
    if not isinstance(names, list) or len(names) > MOST_CAMERAS:
        return []
    return sorted({n for n in names if isinstance(n, str) and n and len(n) <= 256 and
                   not any(c in n for c in "/+#\0")} - now)


def _running(me: dict, box: dict) -> bool:
    """Its process runs now, beside this one: the same boot, another live pid."""
    pid = box.get("pid")
    if box.get("boot") != me["boot"] or not isinstance(pid, int) or isinstance(pid, bool) or \
            pid == me["pid"] or not 0 < pid < 1 << 22:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: it runs
        pass
    try:  # a pid taken since by another program is not the box's
        return b"edge" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _text(value) -> str:
    """At most 64 characters, each printable (a newline or an escape sequence in another's
    message would forge a line of this box's log, or drive the terminal reading it)."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:64])
