"""Remote changes, off the network thread: paho's thread only queues a `config/set` payload
(`submit`: a bounded queue; what it refuses at once — a retained message, an oversized
payload, a full queue — is refused there), and one worker thread reads and checks each
(serve/remote.py), puts it on trial in its camera (serve/camera.py) and, once it passed the
trial, stores it and announces it (`config_applied`, config/state).

Every change ends in exactly one event: `config_applied` or `config_rejected` (key, reason),
and the service logs each event on one line. The live keys a reloaded configuration file
changed (`submit_reload`, SIGHUP) take the same path but are not stored: the file holds them.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Mapping

from ..config_model import shown
from ..errors import ConfigError
from .camera import Camera
from .remote import (
    MAX_PAYLOAD_BYTES,
    OverrideStore,
    RemoteChangeRejected,
    apply_change,
    dotted_keys,
    one_line,
    parse_change,
)

log = logging.getLogger("edge_semvc")

# a camera's states in which no frame is encoded (serve/camera.py), with what they mean
AGAIN = "no frames to try the change on; send it again once it runs"
IDLE = {"lost": f"its input is away: {AGAIN}",
        "failed": f"its recording or pipeline fails and is retried: {AGAIN}",
        "ended": "its file ended: no frames to try the change on", "stopped": "it stops"}
MAX_PENDING = 32  # payloads waiting for the worker; more are refused (a flood is not a queue)
POLL_S = 0.2  # how often the worker looks for changes that passed their trial


class FromFile(dict):
    """A change that came from the reloaded configuration file, not from MQTT: not stored."""


class RemoteChanges:
    """`emit(camera, event, fields)` reports; `publish_state(camera, dict)` sets the camera's
    retained config/state. `cameras` may be filled after construction (by name)."""

    def __init__(self, cameras: Mapping[str, Camera], store: OverrideStore,
                 emit: Callable[[str, str, dict], None],
                 publish_state: Callable[[str, dict], None], max_pending: int = MAX_PENDING):
        self.cameras, self.store = cameras, store
        self.emit, self.publish_state = emit, publish_state
        self.max_pending = max_pending
        self._queue: queue.Queue[tuple[str, bytes | FromFile]] = queue.Queue(max_pending)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="remote-changes", daemon=True)

    def start(self) -> "RemoteChanges":
        self.thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    # --- paho's thread: nothing slow ------------------------------------------------------
    def submit(self, camera: str, payload: bytes, retained: bool = False) -> None:
        if camera not in self.cameras:
            log.warning("a command for unknown camera %s ignored", shown(camera))
        elif retained:  # config/set, or a Home Assistant command topic
            self._refuse(camera, None, "a retained message (a command, published without "
                         "retain: a retained one would be replayed at every reconnect)")
        elif len(payload) > MAX_PAYLOAD_BYTES:
            self._refuse(camera, None, f"payload of {len(payload)} bytes is over the "
                         f"{MAX_PAYLOAD_BYTES}-byte limit")
        else:
            try:
                self._queue.put_nowait((camera, bytes(payload)))
            except queue.Full:
                self._refuse(camera, None, f"{self.max_pending} changes are already waiting; "
                             "send it again later")

    def submit_reload(self, camera: str, doc: dict) -> None:
        """The live keys a reloaded file changed (serve/service.py), waiting for no one."""
        try:
            self._queue.put_nowait((camera, FromFile(doc)))
        except queue.Full:
            self._refuse(camera, None, f"reload: {self.max_pending} changes are already "
                         "waiting; reload again later")

    # --- the worker -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                camera, payload = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                pass
            else:
                self._handle(camera, payload)
            for name, cam in list(self.cameras.items()):
                self._keep_passed(name, cam)

    def _handle(self, camera: str, payload: bytes | FromFile) -> None:
        cam = self.cameras.get(camera)
        if cam is None:  # removed by a reload meanwhile
            return
        try:
            doc = payload if isinstance(payload, FromFile) else parse_change(payload)
            # no frames to try it on: it would wait, unsaid, maybe for ever (a reloaded file's
            # keys wait: the file holds them, and a camera back runs with them)
            if cam.state in IDLE and not isinstance(payload, FromFile):
                raise RemoteChangeRejected(f"the camera is {cam.state} ({IDLE[cam.state]})",
                                           ", ".join(dotted_keys(doc)))
            for _ in range(3):  # a rollback may come between reading cam.cfg and proposing
                base = cam.cfg
                if cam.propose(apply_change(base, doc), doc, base):
                    return
            raise RemoteChangeRejected("the camera's configuration kept changing; send it again")
        except RemoteChangeRejected as e:
            self._refuse(camera, e.key, str(e))
        except Exception as e:  # noqa: BLE001 - whatever it is, a refusal with its event
            self._refuse(camera, None, f"{type(e).__name__}: {e}")

    def settle(self, camera: str, cam: Camera) -> None:
        """`cam` stopped (the service stops, a reload restarts or removes it): a change that
        passed its trial is kept as any other; one still on trial is refused (not stored)."""
        self._keep_passed(camera, cam)
        for change in cam.take_unkept():
            self._refuse(camera, ", ".join(dotted_keys(change)), "not kept: the camera stopped "
                         "before the change's trial ended (it was not stored)")

    def _keep_passed(self, camera: str, cam: Camera) -> None:
        passed = cam.take_passed()
        if passed is None:
            return
        changes, kept, previous = passed
        try:
            remote = [c for c in changes if not isinstance(c, FromFile)]
            if remote:
                self.store.add(camera, *remote)
        except (ConfigError, OSError) as e:  # not kept across a restart: not kept at all
            cam.restore(previous)
            for change in changes:
                self._refuse(camera, ", ".join(dotted_keys(change)), f"cannot be kept: {e}")
            return
        # the state first: the sender sends retained topics before queued events, so a client
        # that sees config_applied reads a config/state that already holds the change
        self.publish_state(camera, kept.to_dict())
        for change in changes:
            self.emit(camera, "config_applied", {"change": change, "source": "reload"}
                      if isinstance(change, FromFile) else {"change": change})

    def _refuse(self, camera: str, key: str | None, reason: Any) -> None:
        self.emit(camera, "config_rejected",
                  {"key": None if key is None else one_line(key), "reason": one_line(reason)})
