"""A headless Chromium driven over the DevTools protocol, and the web page's latency measured in it.

The protocol runs over `--remote-debugging-pipe` (JSON messages ending in NUL on file
descriptors 3 and 4): no WebSocket client, no extra package. `Browser` opens a page, evaluates
JavaScript in it and takes screenshots; the tests drive `serve`'s pages with it.

    python -m edge_semvc.bench.browser http://127.0.0.1:8480/cameras/front [--seconds 20]

prints, for the camera page at that address, the time from the pipeline handing a frame to the
encoder to the browser displaying it (`window.edgeSemvc.lags()`: per frame shown, its
`requestVideoFrameCallback` display time minus the wall-clock time the overlay messages give
that frame; it includes the encoder, the network and the Media Source buffer), the frames the
video decoded meanwhile, those presented and those Chrome counts as dropped. Capture to the
encoder is the stats' `latency_ms.end_to_end`; the two add up to glass to glass but for the
display.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import numpy as np


def _high(fd: int) -> int:
    """The same pipe end at a descriptor >= 10 (the original closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """A headless Chromium with one page (`open(url)`); a context manager."""

    def __init__(self, binary: str | None = None, width: int = 800, height: int = 600,
                 flags: tuple[str, ...] = ()):
        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError("no Chromium (apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="edge-semvc-chromium-")
        to_browser, self._send_fd = os.pipe()
        self._recv_fd, from_browser = os.pipe()
        # above 9, so that bash's 3<& and 4>& below never overwrite one with the other
        to_browser, from_browser = (_high(to_browser), _high(from_browser))
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                "--autoplay-policy=no-user-gesture-required", "--mute-audio",
                "--no-first-run", f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}", *flags, "about:blank"]
        # the protocol's descriptors must be 3 (to the browser) and 4 (from it)
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', binary, *args],
            pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._ready = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: str | None = None

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._recv_fd, 1 << 16)
            if not chunk:
                break
            buffer += chunk
            while b"\0" in buffer:
                message, buffer = buffer.split(b"\0", 1)
                doc = json.loads(message)
                if "id" in doc:
                    with self._ready:
                        self._replies[doc["id"]] = doc
                        self._ready.notify_all()
        with self._ready:
            self._replies[-1] = {"error": {"message": "the browser exited"}}
            self._ready.notify_all()

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        """One protocol command (in the page's session once `open` attached it)."""
        self._next_id += 1
        ident = self._next_id
        message = {"id": ident, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")
        with self._ready:
            if not self._ready.wait_for(lambda: ident in self._replies or -1 in self._replies,
                                        timeout):
                raise TimeoutError(f"{method}: no answer from Chromium in {timeout} s")
            reply = self._replies.pop(ident, None) or self._replies[-1]
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply["result"]

    def open(self, url: str, headers: dict[str, str] | None = None) -> "Browser":
        """Load `url` in a new page; `headers` go with each of its requests (credentials)."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        if headers:
            self.call("Network.enable")
            self.call("Network.setExtraHTTPHeaders", headers=headers)
        self.call("Page.navigate", url=url)
        return self

    def evaluate(self, expression: str):
        """The expression's value in the page (a promise is awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {})}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, every: float = 0.2):
        """Poll until the expression is truthy; its value. TimeoutError names it."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} stayed {value!r} for {timeout} s")
            time.sleep(every)

    def screenshot(self) -> bytes:
        """The page as PNG bytes."""
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._send_fd)
        self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# frames the video decoded, those the page saw presented (requestVideoFrameCallback) and those
# Chrome counts as dropped: at the live edge, frames that came after their display time (shown
# late, not lost: see BENCHMARKS)
PLAYBACK_QUALITY = ("(q => [q.totalVideoFrames, window.edgeSemvc.shown(), q.droppedVideoFrames])("
                    "document.getElementById('video').getVideoPlaybackQuality())")


def page_lag(browser: Browser, seconds: float) -> dict:
    """The camera page's encoder-to-screen latency over `seconds` (the page is open, playing)."""
    before = browser.evaluate(PLAYBACK_QUALITY)
    lags: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(5.0, seconds))  # the page keeps the last 300 samples
        lags += browser.evaluate("window.edgeSemvc.lags()")
    frames, shown, late = (a - b for a, b in zip(browser.evaluate(PLAYBACK_QUALITY), before))
    ms = np.asarray(lags) * 1e3
    out = {"samples": int(len(ms)), "frames": frames, "shown": shown, "late": late}
    if len(ms) < 30:
        return out | {"note": "too little data"}
    p50, p95 = np.percentile(ms, [50, 95])
    return out | {"lag_ms_p50": round(float(p50), 1), "lag_ms_p95": round(float(p95), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_semvc.bench.browser",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("url", help="a camera page: http://HOST:PORT/cameras/NAME")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    with Browser() as browser:
        browser.open(args.url)
        browser.wait_for("window.edgeSemvc && window.edgeSemvc.frames() > 10", timeout=60)
        print(json.dumps(page_lag(browser, args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
