"""Field benchmark: the live pipeline on one source for N seconds, as a device in the field runs it.

Records throughput, dropped frames, end-to-end and per-stage latency (p50/p95/p99), CPU and
peak memory, the output bitrate second by second against the target, and whatever temperature
and power sensors the machine exposes (Linux thermal zones; on a Jetson the INA3221 power
rails and ``tegrastats``). Writes one JSON report. The same code runs on a PC.

    edge-semvc field-bench URI [OUTPUT] --seconds 10 [--realtime | --no-realtime]
        [--speed X] [--loop] [--config FILE] [--set KEY=VALUE ...]
        [--bitrate 800k --rc cbr] [--json FILE]

A live camera delivers frames at its own rate whether or not the encoder keeps up. In
``--realtime`` mode (the default for files and ``demo://``) the source is paced like one: a
camera thread publishes frame *i* at ``t0 + (pts_i - pts_0) / speed`` into a one-frame buffer,
and a frame the pipeline has not taken when the next one arrives is overwritten, as a camera
driver does, and counted as dropped. The kept frames keep their own timestamps, so the output
plays at the real rate with the gaps a live encoder would have.

Only the pipeline's public entry point is used (``run_encode`` with ``on_frame``) plus the
output file, which is demuxed afterwards for the per-second bitrate. The pacing is
``sources.paced.PacedSource``; the sensors are in ``sensors.py``, the report in
``field_report.py``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..options import bounded
from ..sources.paced import PacedSource, Pacing
from .field_report import FieldRun, Measurements, Sensors, build_report, print_summary
from .sensors import (
    Sampler,
    Tegrastats,
    detect_jetson,
    find_power_rails,
    find_thermal_zones,
    rss_bytes,
)

# URI schemes of sources that are live by nature (pace themselves): --realtime is off by default.
LIVE_SCHEMES = {"v4l2", "csi", "rtsp", "rtp", "udp", "srt", "webrtc"}


_positive = bounded(float, 0, strict=True)
_non_negative = bounded(float, 0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The field benchmark's arguments (``edge-semvc field-bench``)."""
    from ..options import add_encoder_arguments

    p.add_argument("input", help="source: file path or URI (file://, demo://astronaut)")
    p.add_argument("output", nargs="?",
                   help="encoded output (.mp4 .mkv .ts .h264); default: a temporary .mp4, "
                        "deleted after the bitrate analysis")
    p.add_argument("--seconds", type=_non_negative, default=10.0,
                   help="run for this many seconds of wall-clock time (default 10; 0: until the "
                        "input ends or Ctrl-C)")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="pace the source at its frame rate like a camera, dropping frames the "
                        "pipeline cannot take in time (default: on for files and demo://)")
    p.add_argument("--speed", type=_positive, default=1.0,
                   help="realtime pacing at this multiple of the source's frame rate "
                        "(default 1; e.g. 4 plays a 30 fps file as a 120 fps camera)")
    p.add_argument("--loop", action="store_true",
                   help="reopen the input when it ends (timestamps continue)")
    add_encoder_arguments(p)
    p.add_argument("--sample-interval", type=_positive, default=0.5, metavar="S",
                   help="sensor/CPU sampling period in seconds (default 0.5)")
    p.add_argument("--json", metavar="FILE", help="write the report here (default: stdout)")


def run(args) -> int:
    """Run the benchmark for parsed ``args``; writes the JSON report. Returns the exit status
    (0; 3 when the input broke part-way; 130 on Ctrl-C — the report is written in both cases).
    Configuration, source, model and encoder errors propagate (the CLI reports them, exit 2)."""
    from .. import preflight
    from ..config import load_config
    from ..options import config_overrides
    from ..pipeline import partial_result, run_encode
    from ..sinks.file import SinkError, check_distinct_files, check_writable, wants_global_headers
    from ..sources import RawVideoOptions, open_source

    check_distinct_files({"INPUT": args.input, "OUTPUT": args.output, "--json": args.json})
    if args.json:
        try:  # the report's folder is made if missing, now rather than after the run
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"cannot write --json {args.json}: {e.strerror}") from None
    check_writable({"OUTPUT": args.output, "--json": args.json})
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    cfg = load_config(args.config, config_overrides(args))
    if not args.no_map:  # models fetched and converted now, before the clock starts
        from ..tools.models import prepare_config

        prepare_config(cfg, cfg.cache_dir(), log=lambda m: print(m, file=sys.stderr))
    preflight.resolve(cfg)  # which runtime and encoder this machine runs (`auto`)
    tmpdir = None
    output = args.output
    if not output:
        tmpdir = tempfile.mkdtemp(prefix="edge_semvc_field_")
        output = os.path.join(tmpdir, "field.mp4")
    wants_global_headers(output)  # an unsupported extension fails before any work
    raw = RawVideoOptions(args.input_width, args.input_height, args.input_rate,
                          args.input_pix_fmt)
    scheme = args.input.partition("://")[0] if "://" in args.input else "file"
    realtime = args.realtime if args.realtime is not None else scheme not in LIVE_SCHEMES

    clock = time.perf_counter
    jetson = detect_jetson()
    zones, rails = find_thermal_zones(), find_power_rails()
    sensors = Sensors(Sampler(args.sample_interval, zones, rails, clock), jetson, rails)
    measured = Measurements(started)

    def on_frame(frame, labels, qp) -> None:
        now = clock()
        cap = paced.capture_times.pop(frame.index, None)
        if cap is not None:
            measured.e2e_ms.append((now - cap) * 1e3)
        measured.done_at.append(now)

    measured.rss_before = rss_bytes()
    source = open_source(args.input, raw)
    paced = PacedSource(source, Pacing(realtime=realtime, speed=args.speed, seconds=args.seconds),
                        reopen=(lambda: open_source(args.input, raw)) if args.loop else None,
                        on_start=measured.open_window, clock=clock)
    status, error, stats = 0, None, None
    try:
        if jetson["available"] and shutil.which("tegrastats"):
            sensors.tegra = Tegrastats(args.sample_interval, clock).start()
        sensors.sampler.start()
        stats = run_encode(paced, output, cfg, semantic=not args.no_map, on_frame=on_frame)
    except (KeyboardInterrupt, Exception) as e:
        stats, status, error = partial_result(e)
    finally:
        measured.close_window(clock())
        paced.close()
        sensors.stop()

    try:
        report = build_report(FieldRun(args=args, paced=paced, output=output,
                                       keep_output=tmpdir is None, stats=stats, error=error,
                                       measured=measured, sensors=sensors))
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    print_summary(report, sys.stderr if not args.json else sys.stdout)
    if error:
        print(f"edge-semvc: error: {error}; the report covers the "
              f"{report['frames']['encoded']} frames before it", file=sys.stderr)
    return status
