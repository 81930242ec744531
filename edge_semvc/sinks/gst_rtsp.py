"""The built-in RTSP server of the GStreamer child (`gst_child.py`, which imports this module
when it runs one): a GstRtspServer whose clients' media take the child's packets through its
`Feed`. Like the child, it runs under the system Python and imports nothing of edge_semvc
(`gst_child` is found beside it: the child runs by path, its folder first on sys.path)."""
import os

from gst_child import RTSP_AUDIO, address_of, appsrc_desc, emit

PAY = {"h264": "rtph264pay", "hevc": "rtph265pay"}


class RtspServer:
    """A GstRtspServer; each client gets its own media (appsrc ! parse ! pay, and appsrc ! pay
    for each carried audio track), fed with the same packets, so that each starts at an IDR of
    its own: joining a shared media starts a client mid-frame, and its first pictures are
    broken."""

    def __init__(self, Gst, config, feed):
        from gi.repository import GstRtsp, GstRtspServer

        self.Gst, self.GstRtsp, self.feed = Gst, GstRtsp, feed
        self.clients = {}  # RTSPClient -> {"address", "transport", "playing"}
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(config["host"])
        self.server.set_service(str(config["port"]))
        factory = GstRtspServer.RTSPMediaFactory()
        self.tracks = len(config.get("tracks", []))
        factory.set_launch("( %s ! %s name=pay0 pt=96 %s)"
                           % (appsrc_desc(config["codec"]), PAY[config["codec"]],
                              "".join(track_desc(i + 1, t)
                                      for i, t in enumerate(config.get("tracks", [])))))
        factory.set_shared(False)
        factory.set_latency(0)
        # PAUSED from DESCRIBE to PLAY, where its running time stands still: the first
        # picture's time then follows the parameter sets prepared at 0 (not the seconds a
        # client that probes before it plays waited; the stamps follow the running time)
        factory.set_suspend_mode(GstRtspServer.RTSPSuspendMode.PAUSE)
        factory.connect("media-configure", self.on_media_configure)
        if config.get("user_env"):
            self.require_credentials(GstRtspServer, factory, config)
        self.server.get_mount_points().add_factory(config["path"], factory)
        self.server.connect("client-connected", self.on_client_connected)

    def require_credentials(self, GstRtspServer, factory, config):
        """Digest authentication (the password never crosses the network in clear) with the
        user and password read from the environment variables the config names."""
        auth = GstRtspServer.RTSPAuth()
        auth.set_supported_methods(self.GstRtsp.RTSPAuthMethod.DIGEST)
        token = GstRtspServer.RTSPToken.new()
        token.set_string("media.factory.role", "viewer")
        auth.add_digest(os.environ[config["user_env"]], os.environ[config["password_env"]],
                        token)
        self.server.set_auth(auth)
        factory.add_role_from_structure(self.Gst.Structure.new_from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))

    def start(self):
        if self.server.attach(None) == 0:
            return "cannot listen on %s:%s (address in use or not this machine's)" % (
                self.server.get_address(), self.server.get_service())
        return None

    def on_media_configure(self, factory, media):
        bin_ = media.get_element()
        src = bin_.get_by_name_recurse_up("src")
        tracks = [bin_.get_by_name_recurse_up("src%d" % (i + 1)) for i in range(self.tracks)]
        # prepared on the last key frame's parameter sets: one key frame, at PLAY
        self.feed.prepare(src, tracks=tracks)
        media.connect("unprepared", lambda m: self.feed.detach(src))

    def on_client_connected(self, server, client):
        conn = client.get_connection()
        address = address_of(conn.get_read_socket().get_remote_address())
        self.clients[client] = {"address": address, "transport": None, "playing": False}
        client.connect("setup-request", self.on_setup)
        client.connect("pre-play-request", self.on_pre_play)
        client.connect("play-request", self.on_play)
        client.connect("closed", self.on_closed)

    def on_setup(self, client, ctx):
        _, value = ctx.request.get_header(self.GstRtsp.RTSPHeaderField.TRANSPORT, 0)
        value = (value or "").lower()
        self.clients[client]["transport"] = (
            "tcp" if "/tcp" in value else "udp-multicast" if "multicast" in value else "udp")

    def on_pre_play(self, client, ctx):
        """Before the client's transports start: its media starts (or restarts) at the next
        IDR, asked for now (it was prepared on the last key frame's parameter sets)."""
        if ctx.media is not None:
            self.feed.resync(ctx.media.get_element().get_by_name_recurse_up("src"))
        return self.GstRtsp.RTSPStatusCode.OK

    def on_play(self, client, ctx):
        info = self.clients[client]
        if not info["playing"]:
            info["playing"] = True
            emit("client_joined", address=info["address"], transport=info["transport"])

    def on_closed(self, client):
        info = self.clients.pop(client, None)
        if info and info["playing"]:
            emit("client_left", address=info["address"], transport=info["transport"])


def track_desc(n, track):
    """Stream n's branch of the media: an appsrc with the track's caps, its payloader (pay<n>,
    dynamic payload type 96 + n)."""
    caps, pay = RTSP_AUDIO[track["codec"]]
    caps += ",rate=%d,channels=%d" % (track["rate"], track["channels"])
    if track["codec"] == "aac":  # raw, with its configuration (the parent turns ADTS raw)
        caps += ",stream-format=raw,codec_data=(buffer)%s" % track["extradata"]
    return ("appsrc name=src%d is-live=true format=time max-bytes=0 caps=\"%s\" ! %s name=pay%d "
            "pt=%d " % (n, caps, pay, n, 96 + n))
