"""What every source is (`Source`), the options of headerless raw video and the schemes'
properties, apart from the implementations (sources/__init__.py picks one by scheme)."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Protocol

from ..frame import Frame


@dataclass
class RawVideoOptions:
    """Geometry for headerless raw video (.yuv): PyAV cannot guess it."""

    width: int = 0
    height: int = 0
    rate: Fraction = Fraction(0)
    pix_fmt: str = ""  # "": the file name's (.nv12, .rgb), else yuv420p


class Source(Protocol):
    width: int
    height: int
    fps: Fraction
    time_base: Fraction
    frame_count: int  # 0 when unknown
    description: str

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Receiver:
    """An input that listens for a stream sent to it (`udp://`, `rtp://`, an `.sdp` file, in
    `udp.py`; `srt://`, in `srt.py`): the input as the user named it (`uri`, for messages:
    FFmpeg may open another name, a written SDP, a pipe) and where it listens ("udp port
    5600"), which a silence is told by."""

    uri: str
    where: str

    def nothing_within(self, seconds: float) -> str:
        return (f"no stream came on {self.where} within {seconds:g} s (is the sender on, and "
                "sending to this machine?)")

    def no_packet_for(self, seconds: float) -> str:
        return (f"no packet on {self.where} for {seconds:.0f} s (the sender stopped, or its "
                "link dropped)")


# FFmpeg options per network scheme: RTSP over TCP (no lost UDP packets smearing the picture).
# Reads time out (pyav.LIVE_TIMEOUT_S) so that a camera that disappears ends the read instead
# of hanging it: the service then reconnects.
NETWORK_SCHEMES = {"rtsp": {"rtsp_transport": "tcp"}, "rtsps": {"rtsp_transport": "tcp"}}
# inputs that never end on their own (and an .sdp file's stream: sources.is_live)
LIVE_SCHEMES = (*NETWORK_SCHEMES, "udp", "rtp", "srt", "v4l2", "csi")
