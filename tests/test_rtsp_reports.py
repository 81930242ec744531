"""The RTSP server's link reports (sinks/gst_rtsp.py, `ClientLink`): what its clients' RTCP
receiver reports say of their link, for `encoder.follow_link`, read from a scripted client
(tests/gst_helpers.py, `ScriptedRtspClient`) that answers each of our sender reports with a
report of its own: honest (RFC 3550's count of what it got) or forged. The rate follower on
real viewers behind a narrow link: test_follow_rtsp.py. Nothing waits on the wall clock but
hang guards: reports and frames are counted."""
from __future__ import annotations

from gst_helpers import GUARD_S
from test_gst_rtsp import scripted_client


def _receiver_report(media_ssrc: int, ext: int, lost: int, sender_report: bytes,
                     lsr_back_s: int = 0) -> bytes:
    """An RTCP receiver report on `media_ssrc` (RFC 3550 6.4.2): highest sequence number
    `ext`, `lost` packets lost in all, answering `sender_report` (its LSR, no delay; a forged
    one `lsr_back_s` seconds earlier)."""
    import struct

    lsr = (int.from_bytes(sender_report[10:14], "big") - (lsr_back_s << 16)) & 0xFFFFFFFF
    block = struct.pack("!IIIIII", media_ssrc, lost & 0xFFFFFF, ext, 0, lsr, 0)
    return struct.pack("!BBHI", 0x81, 201, 7, 0x5EED) + block


def _forging_client(frames, forge, enough):
    """A client over TCP answering each of our sender reports at once with `forge(ssrc, ext,
    n, sender_report)` (its n-th receiver report) until `enough(server, n)`; the server's link
    report then."""
    with scripted_client(frames) as (server, live, client):
        client.play()
        ext = ssrc = answered = 0
        while not enough(server, answered):
            assert live.count < 30 * GUARD_S, server.link_report()  # hang guard
            channel, packet = client.read_any()
            if channel == 0:
                ssrc, seq = int.from_bytes(packet[8:12], "big"), packet[2] << 8 | packet[3]
                ext = (ext & ~0xFFFF | seq) + (0x10000 if seq < (ext & 0xFFFF) else 0)
            elif packet[1] == 200 and ssrc:  # our sender report: answered at once
                answered += 1
                client.send(1, forge(ssrc, ext, answered, packet))
        live.wait_frames(30)  # a second more: the child's next polls (4 a second)
        return server.link_report()


def test_a_client_reporting_more_loss_than_packets_is_believed_no_further_than_them(frames):
    """A client (RTP over TCP) whose receiver reports say far more packets lost than it should
    have had (a forged report, each 100000 more): the server's link report counts at most the
    packets it should have had as lost (it counted them all: 'sent again 9524%' in the
    follower's log, a report ten thousand times the stream)."""
    report = _forging_client(
        frames, lambda ssrc, ext, n, sr: _receiver_report(ssrc, ext, n * 100_000, sr),
        lambda server, n: server.link_report() is not None and server.link_report().seq >= 3)
    assert 0 < report.resent <= report.sent, report


def test_a_receiver_report_with_an_absurd_round_trip_is_not_believed(frames):
    """A report whose LSR no sender report of ours had (an hour back: forged or broken) gives
    a round trip of an hour, which reached the follower as 0 ms (out of range): its least
    round trip, against which every real one after read as a queue. Not believed: the client's
    round trip stays unknown, and no report is made of it alone."""
    report = _forging_client(
        frames, lambda ssrc, ext, n, sr: _receiver_report(ssrc, ext, 0, sr, lsr_back_s=3600),
        lambda server, n: n >= 4)
    assert report is None or report.rtt_ms > 0, report


class _Counted:
    """What an honest receiver reports (RFC 3550 A.3): its highest sequence number, and the
    packets it expected from its first on that did not come."""

    def __init__(self):
        self.ssrc = self.first = self.ext = self.received = 0

    def rtp(self, packet: bytes) -> None:
        self.ssrc, seq = int.from_bytes(packet[8:12], "big"), packet[2] << 8 | packet[3]
        if not self.received:
            self.first = self.ext = seq
        ext = self.ext & ~0xFFFF | seq
        ext += 0x10000 if self.ext - ext > 0x8000 else 0
        self.ext, self.received = max(self.ext, ext), self.received + 1

    def answer(self, sender_report: bytes) -> bytes:
        return _receiver_report(self.ssrc, self.ext, self.ext - self.first + 1 - self.received,
                                sender_report)


def test_a_viewer_that_pauses_and_plays_again_reports_no_loss(frames):
    """A viewer over UDP pauses for two seconds, then plays again: its media went on making
    packets that were never sent to it, whose skipped sequence numbers its next reports count
    as lost (a tenth of the packets, as a link that lost them). Not counted: its reports count
    again from past the PLAY's first packet."""
    with scripted_client(frames, transport="udp") as (server, live, client):
        counted = _Counted()

        def answer(reports):
            while reports:
                channel, packet = client.read_any()
                if channel == 0:
                    counted.rtp(packet)
                elif channel == 1 and packet[1] == 200 and counted.received:
                    client.send(1, counted.answer(packet))
                    reports -= 1

        client.play()
        answer(3)
        client.request("PAUSE", f"Session: {client.session}\r\n")
        live.wait_frames(60)
        client.play()
        answer(4)
        live.wait_frames(30)  # a second more: the child's next polls (4 a second)
        report = server.link_report()
    assert report.sent > 0 and report.resent == 0, report


def _rtcp(kind: int, sender: int, blocks=()) -> bytes:
    """An RTCP receiver report (201) from `sender` with `blocks` (ssrc, lost, ext, lsr), or a
    BYE (203)."""
    import struct

    body = b"".join(struct.pack("!IIIIII", ssrc, lost, ext, 0, lsr, 0)
                    for ssrc, lost, ext, lsr in blocks)
    count = len(blocks) if kind == 201 else 1
    return struct.pack("!BBHI", 0x80 | count, kind, len(body) // 4 + 1, sender) + body


def test_only_the_first_source_reporting_on_our_stream_is_followed(frames):
    """A client's reports (0x5EED) carry a block on another source, saying heavy loss; then a
    second SSRC in its session (a client's second source, or packets from anyone to the
    server's RTCP port) reports on our stream, its loss growing; then both say BYE and the
    client goes on as 0x5EEF (a changed SSRC, RFC 3550 8.2). Only blocks on our stream count,
    from the first source heard, then from the one after the BYE, counting from its first:
    no loss (the server followed whichever source its session listed last, and the switch
    between two sources' counts read as hundreds of packets lost)."""
    def forge(ssrc, ext, n, sender_report):
        lsr = int.from_bytes(sender_report[10:14], "big")
        if n > 5:
            return _rtcp(201, 0x5EEF, [(ssrc, 0, ext, lsr)])
        packet = _rtcp(201, 0x5EED, [(ssrc, 0, ext, lsr), (0xD0D0, 50_000, ext + 5000, lsr)])
        if n >= 3:
            packet += _rtcp(201, 0x5EEE, [(ssrc, 200 * n, ext, lsr)])
        if n == 5:
            packet += _rtcp(203, 0x5EED) + _rtcp(203, 0x5EEE)
        return packet

    report = _forging_client(frames, forge, lambda server, n: n > 5 and
                             server.link_report().seq >= 7)
    assert report.sent > 0 and report.resent == 0, report
