"""MIPI CSI cameras through jetson-utils' `videoSource` (Jetson only; not yet run on a Jetson).

Written against the documented Python API (jetson_utils.videoSource(uri, argv), `Capture(
format='rgb8', timeout=ms)` returning a cudaImage, `cudaConvertColor`, `cudaToNumpy`,
`GetWidth/GetHeight/GetFrameRate`, `IsStreaming`, `Close`): frames are converted to I420 on
the GPU and copied to host memory once. Elsewhere it says why it cannot run.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterator

import numpy as np

from ..errors import SourceError
from ..frame import Frame

CAPTURE_TIMEOUT_MS = 2000  # a camera that delivers nothing this long is treated as lost


def open_csi(uri: str, raw=None) -> JetsonSource:
    return JetsonSource(uri)


class JetsonSource:
    def __init__(self, uri: str):
        try:
            import jetson_utils  # noqa: F401  (only on a Jetson with jetson-utils built)
        except ImportError:
            raise SourceError(f"{uri} needs jetson-utils (a Jetson with jetson-inference's "
                              "jetson-utils installed); it is not importable here") from None
        self._ju = jetson_utils
        self._src = jetson_utils.videoSource(uri, argv=["--input-codec=raw"])
        self.width, self.height = self._src.GetWidth(), self._src.GetHeight()
        if self.width % 2 or self.height % 2:
            raise SourceError(f"{uri} is {self.width}x{self.height}: 4:2:0 needs even sizes")
        self.fps = Fraction(self._src.GetFrameRate() or 30).limit_denominator(1001)
        self.time_base = 1 / self.fps
        self.frame_count = 0
        self.description = f"{uri} ({self.width}x{self.height}, {float(self.fps):.3g} fps, CSI)"
        self._i420 = None

    def frames(self) -> Iterator[Frame]:
        ju, index = self._ju, 0
        while self._src.IsStreaming():
            img = self._src.Capture(format="rgb8", timeout=CAPTURE_TIMEOUT_MS)
            if img is None:  # timeout: the camera stopped delivering
                raise SourceError(f"{self.description}: no frame for {CAPTURE_TIMEOUT_MS} ms")
            if self._i420 is None:
                self._i420 = ju.cudaAllocMapped(width=self.width, height=self.height,
                                                format="i420")
            ju.cudaConvertColor(img, self._i420)
            ju.cudaDeviceSynchronize()
            buf = np.ascontiguousarray(ju.cudaToNumpy(self._i420)).reshape(-1)
            yield Frame.from_i420(buf, self.width, self.height, index, self.time_base, index)
            index += 1

    def close(self) -> None:
        self._src.Close()
