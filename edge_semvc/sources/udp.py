"""Streams sent to this machine without a server, as a drone's companion computer or a gimbal
camera sends them, read through PyAV (FFmpeg):

- `udp://@:PORT` (`udp://HOST:PORT`: bound to that address of this machine, IPv6 too:
  `udp://[::]:PORT` is every address, IPv6 and IPv4; a multicast group `udp://239.1.1.1:PORT` is
  joined): MPEG-TS over UDP, FFmpeg's udp protocol;
- `rtp://@:PORT?codec=h264|hevc&pt=96` (`rtp://[::]:PORT`: IPv6 too): RTP H.264/H.265 over
  UDP with no SDP (QGroundControl's convention: H.264, payload type 96, port 5600). FFmpeg
  reads RTP only through an SDP, so one is written (a temporary file, read once as the input
  opens); the parameter sets come in-band (an RTP camera repeats them before each key frame),
  so it needs no `sprop-parameter-sets`;
- a `.sdp` file (what our own `rtp://` output writes beside itself) describing the stream.

They never end on their own: a sender that stops is told by the read timeout, in its own words
(`Receiver.where`: "no packet on udp port 5600 for 5 s")."""
from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import tempfile
from urllib.parse import parse_qsl, urlsplit

from ..errors import SourceError
from ..uris import file_path
from .base import RawVideoOptions, Receiver
from .pyav import PyAVSource

# FFmpeg's udp protocol as a live receiver: a burst the reader cannot take at once (the models
# loading, an IDR) waits in its 5.4 MB FIFO (fifo_size, in 188-byte packets) and, beyond
# that, is lost (counted as corrupt packets) rather than ending the input (overrun_nonfatal)
UDP_OPTIONS = {"overrun_nonfatal": "1", "fifo_size": str(7 * 4096), "buffer_size": str(1 << 21)}
SDP_OPTIONS = {"protocol_whitelist": "file,udp,rtp", "buffer_size": str(1 << 21)}
RTP_CODECS = {"h264": "H264", "hevc": "H265", "h265": "H265"}  # codec= -> the SDP's rtpmap name
ANY_ADDRESS = ("", "@", "0.0.0.0")
SNIFF_S = 1.0  # how long an input that did not open listens for what comes on its port


def check_uri(uri: str) -> tuple[int, ...]:
    """What a `udp://` or `rtp://` input's URI says is possible (SourceError else), checked
    before it is opened (`serve` refuses a camera's at the start): the UDP ports it takes
    alone (none for a multicast group, which others may join too)."""
    if uri.startswith("udp:"):
        host, port = _udp_address(uri)
        return () if _multicast(host) else (port,)
    host, port, _, _ = _rtp_address(uri)
    return () if _multicast(host) else (port, port + 1)


def open_udp(uri: str, raw: RawVideoOptions) -> PyAVSource:
    """`udp://@:PORT` or `udp://HOST:PORT`: MPEG-TS sent to this machine."""
    host, port = _udp_address(uri)
    multicast = _multicast(host)
    options = dict(UDP_OPTIONS)
    if host and not multicast:
        options["localaddr"] = host  # FFmpeg binds every address unless told this one
    if not multicast:
        check_free(uri, host, (port,))
    url = f"udp://{_bracketed(host)}:{port}" if multicast else f"udp://@:{port}"
    try:
        return PyAVSource(url, raw, live=options, receiver=Receiver(uri, f"udp port {port}"))
    except SourceError as e:
        raise e if multicast else _explained(e, uri, host, port, None) from None


def open_rtp(uri: str, raw: RawVideoOptions) -> PyAVSource:
    """`rtp://@:PORT[?codec=h264|hevc&pt=96]`: RTP sent to this machine, with no SDP."""
    host, port, pt, codec = _rtp_address(uri)
    multicast = _multicast(host)
    if not multicast:
        check_free(uri, host, (port, port + 1))
    sdp = (f"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=edge-semvc RTP input\r\n"
           f"c=IN IP{6 if ':' in host else 4} {host or '0.0.0.0'}\r\nt=0 0\r\n"
           f"m=video {port} RTP/AVP {pt}\r\n"
           f"a=rtpmap:{pt} {codec}/90000\r\n")
    fd, path = tempfile.mkstemp(prefix="edge-semvc-", suffix=".sdp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(sdp)
        return PyAVSource(path, raw, live=SDP_OPTIONS, device="sdp",
                          receiver=Receiver(uri, f"udp port {port}"))
    except SourceError as e:
        raise e if multicast else _explained(e, uri, host, port, (pt, codec)) from None
    finally:  # FFmpeg read it as it opened
        os.unlink(path)


def open_sdp(uri: str, raw: RawVideoOptions) -> PyAVSource:
    """A `.sdp` file that describes an RTP stream sent to this machine."""
    path = file_path(uri)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror or e}") from None
    ports = re.findall(r"^m=\w+ (\d+)", text, flags=re.M)
    if not ports:
        raise SourceError(f"{path} describes no stream (no m= line): not an SDP file?")
    hosts = re.findall(r"^c=IN IP[46] ([^\s/]+)", text, flags=re.M)
    if not any(_multicast(h) for h in hosts):  # FFmpeg binds each port and its RTCP's
        check_free(path, "::" if any(":" in h for h in hosts) else "",
                    tuple(p for port in map(int, ports) if 0 < port < 65535
                          for p in (port, port + 1)))
    where = f"udp port{'s' if len(ports) > 1 else ''} {', '.join(ports)}"
    return PyAVSource(path, raw, live=SDP_OPTIONS, device="sdp", receiver=Receiver(path, where))


def _udp_address(uri: str) -> tuple[str, int]:
    parts, host, port = _address(uri, last_port=65535)
    _options(uri, parts, {})
    return host, port


def _rtp_address(uri: str) -> tuple[str, int, int, str]:
    """HOST, PORT, payload type and the SDP's codec name of an `rtp://` input."""
    parts, host, port = _address(uri, last_port=65534)  # its RTCP takes PORT + 1
    options = _options(uri, parts, {"codec": "h264", "pt": "96"})
    codec = RTP_CODECS.get(options["codec"].lower())
    if codec is None:
        raise SourceError(f"input {uri!r}: codec {options['codec']!r} is not one of h264, hevc")
    if not (options["pt"].isdigit() and 96 <= int(options["pt"]) <= 127):
        raise SourceError(f"input {uri!r}: payload type pt={options['pt']!r} is not one of the "
                          "dynamic types 96-127")
    if host and host != "::" and not _multicast(host):
        raise SourceError(f"input {uri!r}: an RTP input listens on every address of this "
                          f"machine: give rtp://@:{port} (rtp://[::]:{port}: IPv6 too; a "
                          "multicast group as the host is joined)")
    return host, port, int(options["pt"]), codec


def _address(uri: str, last_port: int) -> tuple[object, str, int]:
    """(urlsplit result, HOST, PORT) of a udp:// or rtp:// input; HOST "" for every IPv4
    address ("::": every address, IPv6 and IPv4)."""
    parts = urlsplit(uri)
    scheme = parts.scheme
    try:
        port = parts.port
    except ValueError:  # beyond 65535, or not a number
        port = -1
    if port is None:
        raise SourceError(f"input {uri!r} needs a port to listen on, e.g. {scheme}://@:5600")
    if not 1 <= port <= last_port:
        raise SourceError(f"input {uri!r}: its port {parts.netloc.rpartition(':')[2]!r} is not "
                          f"one of 1-{last_port}")
    host = parts.hostname or ""
    if host not in ANY_ADDRESS and not _is_address(host):
        try:  # a name (localhost): the IPv4 address it stands for
            host = socket.gethostbyname(host)
        except (OSError, UnicodeError) as e:
            raise SourceError(f"input {uri!r}: {host!r} has no IPv4 address ({e}); give one of "
                              f"this machine's, a multicast group, or every address: "
                              f"{scheme}://@:{port}") from None
    return parts, "" if host in ANY_ADDRESS else host, port


def _options(uri: str, parts, known: dict[str, str]) -> dict[str, str]:
    """The query options of `uri` over their defaults in `known`; an unknown one refused."""
    options = dict(known)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in known:
            raise SourceError(f"unknown option {name!r} in input {uri!r} (known: "
                              f"{', '.join(known) or 'none'})")
        options[name] = value
    return options


def _is_address(host: str) -> bool:
    try:
        return bool(ipaddress.ip_address(host))
    except ValueError:
        return False


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _multicast(host: str) -> bool:
    return _is_address(host) and ipaddress.ip_address(host).is_multicast


def _explained(error: SourceError, uri: str, host: str, port: int,
               rtp_as: tuple[int, str] | None) -> SourceError:
    """`error` (FFmpeg could not open the input), or what comes on the port when that is not
    what the input takes (`rtp_as`: the payload type and codec of an `rtp://` input): MPEG-TS
    to an `rtp://` input, RTP to a `udp://` one, RTP of another payload type (FFmpeg drops it
    unsaid) or that did not decode as the codec given, with the input to give."""
    pt, codec = rtp_as or (None, "")
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(SNIFF_S)
        try:
            s.bind((host, port))
            data = s.recv(2048)
        except OSError:  # in use again, or nothing came
            return error
    rtp = len(data) > 12 and data[0] >> 6 == 2  # RTP version 2
    came = data[1] & 0x7F if rtp else None
    if data[:1] == b"\x47" and pt is not None:
        return SourceError(f"cannot open {uri}: MPEG-TS comes on udp port {port}, not RTP: give "
                           f"udp://@:{port}")
    if rtp and came != pt:
        return SourceError(f"cannot open {uri}: RTP with payload type {came} comes on udp port "
                           f"{port}" + (", not MPEG-TS" if pt is None else f", not {pt}") +
                           f": give rtp://@:{port}?pt={came} (and codec=hevc for H.265)")
    if rtp:
        other = "hevc" if codec == "H264" else "h264"
        return SourceError(f"{error}: RTP of payload type {pt} comes on udp port {port} but "
                           f"no picture decoded as {codec}: is it codec={other}?")
    return error


def check_free(uri: str, host: str, ports: tuple[int, ...]) -> None:
    """Each UDP port can be bound on `host` ("": every address) now: FFmpeg would say no more
    than "Address already in use"."""
    for port in ports:
        with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError as e:
                what = {errno.EADDRINUSE: "another program receives on it (QGroundControl, "
                                          "another receiver?)",
                        errno.EADDRNOTAVAIL: f"{host} is no address of this machine"
                        }.get(e.errno, e.strerror or str(e))
                raise SourceError(f"cannot open {uri}: udp port {port}"
                                  f"{' on ' + host if host else ''} cannot be bound: "
                                  f"{what}") from None
