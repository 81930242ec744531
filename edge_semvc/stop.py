"""Stopping a run on purpose: SIGINT (Ctrl-C), SIGTERM (systemctl stop, docker stop, timeout)
and SIGHUP (a closed terminal) all end a run the same way: the pipeline finalises the output,
writes the statistics with `"complete": false`, and the process exits with 128 + the signal's
number (130, 143, 129)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) arrived: the run ends like on Ctrl-C, with the
    output finalised and exit status 128 + the signal's number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


_finalising = threading.Event()
_deferring = False  # inside `deferred()`: a stop waits for its end
_pending: int | None = None  # the signal that is waiting
_noted: int | None = None  # a stop that came while a run finalised (for `between_runs`)


def finalising(on: bool) -> None:
    """From the moment a run starts to finalise its output (flush, trailer, statistics) until the
    next run starts, a stop signal must not cut that short: it is then only noted (ignored), and
    the run ends as it was ending anyway."""
    global _pending, _noted
    if on:
        _finalising.set()
    else:
        _finalising.clear()
        _pending = _noted = None


def between_runs() -> None:
    """For a program with work of its own between two runs (the bench judges each encode): the
    last run is over, so a stop that came while it finalised ends the program now (Stopped),
    and one that comes from here on stops it where it is, instead of being ignored until the
    next run starts."""
    global _noted
    signum = _noted
    finalising(False)
    if signum is not None:
        raise Stopped(signum)


@contextmanager
def deferred():
    """A stop signal that arrives inside is raised when the block ends: a frame handed to the
    encoder has its packets written and is counted, or none of it happened (the signal's
    exception lands between two Python steps, so without this a frame could be in the encoder
    and the file but not in the statistics, or its packets half written)."""
    global _deferring, _pending
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
    if _pending is not None:
        signum, _pending = _pending, None
        raise Stopped(signum)


def stop_on_signals() -> None:
    """SIGTERM (systemctl stop, docker stop, timeout) and SIGHUP (a closed terminal) stop a run
    as Ctrl-C does, instead of killing it with an unplayable file. Only the first stop counts:
    later ones are ignored while the output is finalised (a second Ctrl-C must not abort that)."""
    def handler(signum, frame):
        global _pending, _noted
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        if _finalising.is_set():
            _noted = signum  # the run ends as it was ending; `between_runs` may act on it
            return
        if _deferring:
            _pending = signum
            return
        raise Stopped(signum)

    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only (an embedding program keeps its own)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def exit_status(e: KeyboardInterrupt) -> int:
    return 128 + getattr(e, "signum", int(signal.SIGINT))


def set_on_signals(event: threading.Event, reload: threading.Event | None = None) -> None:
    """For a long-running service whose runs end and start all the time in their own threads:
    the first SIGINT, SIGTERM or SIGHUP sets `event` (the supervisor then stops every run in
    order); later ones are ignored. With `reload`, SIGHUP sets that instead, every time
    (systemd's `ExecReload=/bin/kill -HUP $MAINPID`)."""
    stops = (signal.SIGINT, signal.SIGTERM) if reload is not None else (
        signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def handler(signum, frame):
        for s in stops:
            signal.signal(s, signal.SIG_IGN)
        event.set()

    for s in stops:
        signal.signal(s, handler)
    if reload is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: reload.set())
