"""What a run asks of its encoder, decided once before it opens, from the configuration, the
source and the outputs: its settings (the keyframe interval above all: the storage profile's,
or one for outputs that lose packets), the storage profile's policy, the rate follower, and
the line that tells a live run's choice."""
from __future__ import annotations

import logging

from .config import Config
from .encoders.base import EncoderSettings
from .encoders.config import EncoderConfig
from .errors import SinkError
from .follow import LinkFollower
from .sinks.base import Outputs, loss_note
from .sources import Source
from .storage import Observer, StoragePolicy

log = logging.getLogger("edge_semvc")


def encoder_settings(cfg: Config, source: Source, outputs: Outputs,
                     follower: LinkFollower | None = None) -> EncoderSettings:
    """`follower`: the run's rate follower, whose rate the encoder starts at."""
    e = cfg.encoder
    keyint, caller_idr, sparse = e.keyint or None, False, False
    if e.profile == "storage":  # the pipeline places the IDRs, or a fixed gop_s
        caller_idr, sparse = e.storage.dynamic_gop, e.storage.dynamic_fps
        keyint = None if caller_idr else max(1, round(e.storage.gop_s * source.fps))
    elif keyint is None and e.lossy_keyint_s and outputs.loses_packets:
        keyint = max(1, round(e.lossy_keyint_s * source.fps))
    return EncoderSettings(
        width=source.width, height=source.height, fps=source.fps, time_base=source.time_base,
        rc=e.rate_control(), bitrate=(follower.bitrate if follower else e.bitrate) or None,
        crf=e.crf, preset=e.preset, tune=e.tune or None,
        keyint=keyint, threads=e.threads, global_headers=outputs.global_headers,
        caller_idr=caller_idr, sparse_frames=sparse, intra_refresh=e.intra_refresh,
        aq_with_map=e.aq_with_map, colour=getattr(source, "colour", (2, 2, 2)),
        params=dict(e.params))


def tell_loss(e: EncoderConfig, outputs: Outputs, enc, settings: EncoderSettings) -> None:
    """Once at a live run's start: the keyint chosen for outputs that can lose packets, or a
    warning where the encoder's own would show a lost packet for long (`loss_note`)."""
    if settings.keyint and not e.keyint:
        what = "a refresh period" if settings.intra_refresh else "an IDR"
        log.info("%s can lose packets: %s every %d frames (encoder.lossy_keyint_s: %g s)",
                 ", ".join(o.uri for o in outputs.outputs if o.loses_packets), what,
                 settings.keyint, e.lossy_keyint_s)
    note = loss_note(outputs.outputs, enc.settings_summary().get("keyint"),
                     settings.intra_refresh, float(settings.fps))
    if note:
        log.warning("%s", note)


def storage_policy(cfg: Config, source: Source, outputs: Outputs):
    """The storage profile's observer and policy (storage.py), or (None, None)."""
    e = cfg.encoder
    if e.profile != "storage":
        return None, None
    raw = [o.uri for o in outputs.outputs if not o.keeps_timestamps]
    if e.storage.dynamic_fps and raw:
        instead = "--stdout-format ts" if raw[0] == "-" else ".mp4, .mkv or .ts"
        raise SinkError(f"{raw[0]}: a raw stream keeps no timestamps, so the frames the "
                        f"storage profile leaves out would shorten it; write {instead}, "
                        "or set encoder.storage.dynamic_fps=false")
    return (Observer(e.storage, source.fps),
            StoragePolicy(e.storage, source.fps, source.time_base))


def link_follower(cfg: Config, outputs: Outputs,
                  start: int | None = None) -> LinkFollower | None:
    """The rate follower (`encoder.follow_link`), where an output reports on its link; `start`:
    the rate it starts at (LinkFollower), the encoder's then."""
    e = cfg.encoder
    if not e.follow_link.enabled:
        return None
    if not any(o.reports_link for o in outputs.outputs):
        log.warning("encoder.follow_link: no output reports on its link (SRT and the RTSP "
                    "server do): the bit rate stays at encoder.bitrate")
        return None
    return LinkFollower(e.follow_link, e.bitrate, start)
