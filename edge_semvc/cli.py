"""Command line: `edge-semvc encode INPUT OUTPUT`, `edge-semvc models ...`, `edge-semvc config`.

Errors the user can fix print one line `edge-semvc: error: ...` and exit 2; an input that
breaks part-way or ends early exits 3 after the frames before the break are written to a
playable file; a stop signal (Ctrl-C, SIGTERM, SIGHUP) exits 128 + its number the same way.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .options import add_encoder_arguments, config_overrides, non_negative_int

EXIT_USAGE = 2  # 3 (input broke part-way), 128 + signal (stopped): pipeline.partial_result


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edge-semvc", description="Semantic-aware video encoder.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("encode", help="compress a video with semantic rate allocation")
    e.add_argument("input", help="file path or URI (file://, demo://astronaut)")
    e.add_argument("output", nargs="+",
                   help="one or more outputs, all fed by one encoder: a file (its extension "
                        "picks the container: .mp4, .mkv, .ts, .h264, .hevc), - (standard "
                        "output: see --stdout-format), rtp://HOST:PORT, "
                        "udp://HOST:PORT (MPEG-TS), srt://HOST:PORT, rtsp://@:PORT/PATH (a "
                        "built-in server); README, Outputs")
    add_encoder_arguments(e)
    e.add_argument("--stdout-format", choices=["ts", "h264", "hevc"], default="ts",
                   help="what the output - writes: MPEG-TS (default) or raw Annex-B")
    e.add_argument("--frames", type=non_negative_int, default=0, metavar="N",
                   help="encode only the first N frames (0: all)")
    e.add_argument("--realtime", action="store_true",
                   help="release a file's (or demo://'s) frames at their own rate, as a camera "
                        "would (FFmpeg's -re): to stream a file to receivers; a frame the run "
                        "could not take in time is dropped and counted (input_dropped)")
    e.add_argument("--stats-json", help="write run statistics to this file")
    e.add_argument("--qp-map-png", help="write the QP map over one frame as a PNG")
    e.add_argument("--qp-map-video", help="write the QP map over every frame as a video")
    e.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress line on stderr (auto: when stderr is a terminal)")

    m = sub.add_parser("models", help="list, prepare or verify the labeler's models")
    m.add_argument("action", choices=["list", "prepare", "verify"])
    m.add_argument("names", nargs="*", help="registry model names (default: list all; "
                                            "prepare/verify the configured models)")
    m.add_argument("--config", help="YAML configuration whose labeler.models to prepare/verify "
                                    "(default: the default models)")
    m.add_argument("--cache-dir", help="model cache (default $EDGE_SEMVC_CACHE or "
                                       "~/.cache/edge_semvc)")
    m.add_argument("--mirror", metavar="DIR", help="offline mirror folder holding the wheels and "
                                                  "model files (default $EDGE_SEMVC_MIRROR)")
    m.add_argument("--sha256", metavar="HEX", help="expected sha256 of a URL model the registry "
                                                  "pins none for (one NAME)")
    m.add_argument("--json", action="store_true", help="list: one JSON object per model")

    sv = sub.add_parser("serve", help="run the cameras of a configuration as a service: "
                                      "segments, MQTT telemetry, remote configuration")
    sv.add_argument("--config", required=True,
                    help="YAML configuration with `cameras:`, `record:` and `mqtt:` "
                         "(systemd/config.example.yml)")
    sv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a configuration key (repeatable)")
    sv.add_argument("--seconds", type=float, default=0.0, metavar="S",
                    help="stop after S seconds (default: run until stopped)")
    sv.add_argument("--stats-json", metavar="FILE",
                    help="at exit, write each camera's figures over the whole run here")

    c = sub.add_parser("config", help="print the default configuration or its JSON schema")
    what = c.add_mutually_exclusive_group()
    what.add_argument("--schema", action="store_true", help="print the JSON schema")
    c.add_argument("--serve", action="store_true",
                   help="the service's configuration (with cameras, record, mqtt)")
    what.add_argument("--reference", action="store_true",
                      help="print the configuration reference (docs/configuration.md)")

    b = sub.add_parser("bench", help="rate-distortion, accuracy and speed: semantic vs x264")
    from .bench.run import add_arguments as bench_arguments
    bench_arguments(b)

    f = sub.add_parser("field-bench", help="the live pipeline on a source for N seconds: fps, "
                                           "latency, drops, CPU, memory, bitrate, sensors")
    from .bench.field import add_arguments as field_arguments
    field_arguments(f)

    cal = sub.add_parser("calibrate", help="INT8 QDQ model from representative frames")
    from .tools.calibrate import add_arguments as calibrate_arguments
    calibrate_arguments(cal)

    eng = sub.add_parser("engines", help="build and list TensorRT engines")
    from .tools.engines import add_arguments as engines_arguments
    engines_arguments(eng)
    return p


def cmd_encode(args) -> int:
    from . import preflight
    from .config import load_config
    from .errors import SourceError
    from .pipeline import EXIT_INCOMPLETE, Extras, Live, partial_result, run_encode
    from .sinks import scheme_of
    from .sources import RawVideoOptions, is_live, open_source
    from .sources.paced import PacedSource, Pacing

    cfg = load_config(args.config, config_overrides(args))
    streams = _checked_outputs(args)
    if args.no_map and (args.qp_map_png or args.qp_map_video):
        _log_stderr("--no-map: the map pictures show the frames with no map (plain x264)")
    if not args.no_map:  # models fetched and converted now, before the input is opened
        from .tools.models import prepare_config

        prepare_config(cfg, cfg.cache_dir(), log=_log_stderr)
    preflight.resolve(cfg)  # which runtime and encoder this machine runs (`auto`)
    raw = RawVideoOptions(args.input_width, args.input_height, args.input_rate, args.input_pix_fmt)
    live_input = is_live(args.input)
    if args.realtime and live_input:
        raise SourceError(f"--realtime paces a file or demo://; {args.input} paces itself")
    source = open_source(args.input, raw)
    if (raw.width or raw.height or raw.rate) and not getattr(source, "raw", False):
        source.close()
        raise SourceError(f"--input-width, --input-height and --input-rate describe raw video "
                          f"(.yuv, or the standard input), not {args.input}: leave them out")
    if args.realtime:  # a camera's timing: the labeler's budget is a share of each frame period
        source = PacedSource(source, Pacing(realtime=True))
    progress = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    extras = Extras(png=args.qp_map_png, video=args.qp_map_video, progress=progress)
    status, error, write_failed = 0, None, False
    try:
        live = Live(cameras=1) if live_input or args.realtime else None
        stats = run_encode(source, streams, cfg, semantic=not args.no_map,
                           max_frames=args.frames, extras=extras, live=live)
    except (KeyboardInterrupt, Exception) as e:
        stats, status, error = partial_result(e)
        write_failed = isinstance(e, OSError)
    finally:
        source.close()
    if args.realtime:
        stats["input_dropped"] = source.dropped
    if live_input and error is None and stats["frames"] and \
            not (args.frames and stats["frames"] >= args.frames):
        error = (f"{args.input}: the stream ended after {stats['frames']} frames (a camera "
                 "does not end on its own: did it go away?)")
        stats.update(complete=False, error=error)
        status = EXIT_INCOMPLETE
    if not stats["frames"]:  # the statistics say so too: a run that encoded nothing failed
        error = error or f"{args.input} holds no frames"
        stats.update(complete=False, error=error)
    if args.stats_json:
        try:
            with open(args.stats_json, "w") as f:
                json.dump(stats, f, indent=2)
        except OSError as e:  # e.g. the same full disk: say so, keep the run's status
            print(f"edge-semvc: error: cannot write --stats-json {args.stats_json}: "
                  f"{e.strerror or e}", file=sys.stderr)
    if not stats["frames"]:  # nothing to keep: a usage problem, not a broken run
        print(f"edge-semvc: error: {error}; nothing was encoded", file=sys.stderr)
        for out in streams:  # an empty container is no video
            if "OUTPUT" in out.files:
                Path(out.files["OUTPUT"]).unlink(missing_ok=True)
        return status if status >= 128 else EXIT_USAGE  # a stop signal keeps its status
    # standard output may carry the video: the summary goes to stderr then
    _print_summary(stats, args, sys.stderr if "-" in map(scheme_of, args.output) else sys.stdout)
    if error:
        mp4 = any(o["uri"].lower().endswith(".mp4") for o in stats["outputs"])
        kept = ("each output keeps what reached it" + (
                " (where finalising failed, said above, an MP4 does not play; .mkv and .ts do)"
                if mp4 else "") if write_failed else f"{stats['frames']} frames were written")
        print(f"edge-semvc: error: {error}; {kept}", file=sys.stderr)
    return status


def _checked_outputs(args) -> list:
    """`encode`'s outputs made from their URIs, and what fails before any work: unsupported
    outputs and extensions, two arguments naming one file or one port (an output and the
    input too), a host with no address, unwritable paths."""
    from .errors import SinkError
    from .sinks import open_output, scheme_of
    from .sinks.file import check_distinct_files, check_writable
    from .sinks.uri import check_input_ports, check_ports, check_resolves
    from .sources.ports import input_ports
    from .visualize import check_map_video

    if args.stdout_format != "ts":
        args.output = [f"-?format={args.stdout_format}" if u == "-" else u for u in args.output]
    streams = [open_output(uri, on_event=_log_event) for uri in args.output]
    files = {_numbered(what, n, len(streams)): path
             for n, out in enumerate(streams, 1) for what, path in out.files.items()}
    outputs = {**files, "--stats-json": args.stats_json,
               "--qp-map-png": args.qp_map_png, "--qp-map-video": args.qp_map_video}
    check_distinct_files({"INPUT": args.input, **outputs})
    check_ports(streams)
    check_input_ports([(args.input, input_ports(args.input))], streams)
    for out in streams:
        if out.sends_to:
            check_resolves(out.uri, out.sends_to)
    if sum(scheme_of(uri) == "-" for uri in args.output) > 1:
        raise SinkError("standard output (-) can be given once")
    if args.qp_map_video:
        check_map_video(args.qp_map_video)
    check_writable(outputs, images=("--qp-map-png",))
    return streams


def _numbered(what: str, n: int, outputs: int) -> str:
    """OUTPUT, or OUTPUT 2 of several."""
    return f"{what} {n}" if outputs > 1 and what == "OUTPUT" else what


def _log_stderr(message: str) -> None:
    print(f"edge-semvc: {message}", file=sys.stderr)


def _log_event(name: str, **fields) -> None:
    """An output's event (a receiver joined, a peer lost): one line on stderr."""
    details = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"edge-semvc: {name} {details}", file=sys.stderr, flush=True)


def _print_summary(s: dict, args, out=sys.stdout) -> None:
    from .sinks import is_stream

    def say(line: str) -> None:
        print(line, file=out)

    st = s["stages"]
    cov = ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["label_coverage"].items()
                    if k != "background")
    say(f"{s['input']}\n-> {', '.join(o['uri'] for o in s['outputs'])}: {s['frames']} frames, "
        f"{s['bytes']} bytes, {s['bitrate_kbps']:.1f} kbit/s, {s['fps']:.1f} fps"
        + (f", {s['input_dropped']} input frames dropped (--realtime: not taken in time)"
           if s.get("input_dropped") else ""))
    say("   " + rate_control_line(s["config"]["encoder"], s["encoder"].get("vbv_maxrate_kbps"),
                                  s.get("follow_link")))
    say("   stage ms (mean/p95): " + ", ".join(
        f"{k} {v['mean_ms']:.2f}/{v['p95_ms']:.2f}" for k, v in st.items()))
    roi, bg = s["mean_offset_roi"], s["mean_offset_background"]
    say(f"   labelled macroblocks: {cov or 'none'}; mean QP offset ROI "
        f"{'n/a' if roi is None else f'{roi:+.2f}'}, background "
        f"{'n/a' if bg is None else f'{bg:+.2f}'}")
    for o in s["outputs"]:
        if is_stream(o["uri"]):
            say(f"   {o['uri']}: {o['state']}, " + ", ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in o.items() if k not in ("uri", "state")))
    for what in ("qp_map_png", "qp_map_video", "stats_json"):
        if getattr(args, what):
            say(f"   {what.replace('_', ' ')}: {getattr(args, what)}")


def rate_control_line(encoder: dict, ran_kbps: int | None = None,
                      follow: dict | None = None) -> str:
    """What rate control ran, and why (encoder.rc auto follows what was given); `ran_kbps`: the
    VBV rate the encoder read back (x264 and x265 take whole kbit/s), said where it differs;
    `follow`: the link follower's statistics, where it changed the rate (the encoder then ends
    at the follower's rate, not at a rounded one)."""
    from .encoders.config import EncoderConfig

    e = EncoderConfig(**{k: v for k, v in encoder.items() if k != "storage"})
    rc, kbps = e.rate_control(), e.bitrate / 1e3
    why = ("" if e.rc != "auto" else " (chosen: a bitrate alone is the target)" if rc == "cbr"
           else " (chosen: the storage profile is quality-targeted)" if e.bitrate
           else " (chosen: no bitrate given)")
    if rc == "crf":
        cap = f", capped at {kbps:g} kbit/s (VBV)" if e.bitrate else ""
        return f"rate control: crf {e.crf:g}{cap}{why}"
    ran = (f" (the encoder runs {ran_kbps} kbit/s: whole kbit/s)"
           if ran_kbps and rc == "cbr" and ran_kbps != kbps else "")
    if follow and (follow.get("decreases") or follow.get("increases")):
        ran = (f" (follow_link: {follow['decreases']} decreases, {follow['increases']} increases;"
               f" {follow['bitrate'] / 1e3:g} kbit/s at the end, {follow['lowest'] / 1e3:g} at "
               "the lowest)")
    return f"rate control: {rc}, target {kbps:g} kbit/s{ran}{why}"


def _any_config(path: str):
    """A configuration file of `encode` or of `serve` (one with `cameras:`), so that `models
    prepare --config /etc/edge-semvc/config.yml` prepares what the service will run."""
    import yaml

    from .config import load_config
    from .serve.config import ServeConfig

    try:
        top = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        top = None  # load_config says what is wrong with it
    serve = isinstance(top, dict) and "cameras" in top
    return load_config(path, cls=ServeConfig) if serve else load_config(path)


def cmd_models(args) -> int:
    from pathlib import Path

    from .config import Config
    from .errors import ModelError
    from .labeler.registry import describe, list_models, model_paths
    from .tools.models import model_file, prepare_model, verify_model

    cfg = _any_config(args.config) if args.config else Config()
    cache = Path(args.cache_dir) if args.cache_dir else cfg.cache_dir()
    if args.action == "list":
        wanted, entries = set(args.names), list_models()
        known = {entry["name"] for entry in entries}
        if wanted - known:
            raise ModelError(f"unknown model {sorted(wanted - known)[0]!r} (known: "
                             f"{', '.join(sorted(known))})")
        for entry in entries:
            if wanted and entry["name"] not in wanted:
                continue
            if args.json:
                print(json.dumps(entry, default=str))
                continue
            src = entry["source"]
            ready = model_paths(entry["name"], cache)[1].exists()
            print(f"{entry['name']:30s} {entry['role']:12s} {entry['decoder']:16s} "
                  f"{'ready' if ready else '-':6s} {'default' if entry.get('default') else '':8s}"
                  f"{src.get('wheel') or src.get('npm') or src.get('url')}")
        return 0
    names = args.names or [e if isinstance(e, str) else e.get("name") for e in cfg.labeler.models
                           if isinstance(e, str) or "path" not in e]
    if not args.names and cfg.emotion.enabled:  # the emotion classifier runs beside them
        names.append(cfg.emotion.model)
    if args.sha256 and len(names) != 1:
        raise ModelError("--sha256 goes with exactly one model name")
    if args.action == "prepare" and not args.names:  # models given by path are converted too
        for i, entry in enumerate(cfg.labeler.models):
            if isinstance(entry, dict) and "path" in entry:
                key = f"labeler.models[{i}]"
                print(f"{key}: {model_file(describe(entry, key), key, cache, log=print)}")
    failed = 0
    for name in names:  # each one, whatever the one before did
        try:
            if args.action == "prepare":
                path = prepare_model(name, cache, log=print, mirror=args.mirror,
                                     sha256=args.sha256)
                print(f"{name}: {path}")
            else:
                verify_model(name, cache)
                print(f"{name}: ok")
        except ModelError as e:
            _error(e)
            failed += 1
    return EXIT_USAGE if failed else 0


def cmd_config(args) -> int:
    import json

    from .config import Config, json_schema
    from .serve import config as serve_config

    if args.reference:
        print(serve_config.reference(), end="")
    elif args.schema:
        print(json.dumps(serve_config.json_schema() if args.serve else json_schema(), indent=2))
    else:
        print((serve_config.ServeConfig() if args.serve else Config()).to_yaml(), end="")
    return 0


def cmd_serve(args) -> int:
    from . import preflight
    from .config import load_config
    from .serve.config import ServeConfig
    from .serve.service import Service
    from .sinks.file import check_writable
    from .stop import set_on_signals

    def load() -> ServeConfig:  # at the start, and again on SIGHUP
        cfg = load_config(args.config, args.set, cls=ServeConfig)
        preflight.resolve(cfg)  # every camera's runtime and encoder (`auto`)
        return cfg

    cfg = load()
    check_writable({"--stats-json": args.stats_json})
    service = Service(cfg, load=load)
    # SIGTERM/SIGINT: every camera's segment is closed, then exit 0; SIGHUP: reload
    set_on_signals(service.stop_event, reload=service.reload_event)
    if EARLY_RELOAD.is_set():
        service.reload_event.set()
    status = service.run(max_seconds=args.seconds)
    if args.stats_json:
        from .uris import hide_passwords

        Path(args.stats_json).write_text(json.dumps(hide_passwords(service.summary), indent=2)
                                         + "\n")
    return status


def cmd_bench(args) -> int:
    from .bench.run import run

    return run(args)


def cmd_field_bench(args) -> int:
    from .bench.field import run

    return run(args)


def cmd_calibrate(args) -> int:
    from .tools.calibrate import run

    return run(args)


def cmd_engines(args) -> int:
    from .tools.engines import run

    return run(args)


EARLY_RELOAD = threading.Event()  # a SIGHUP before serve's service runs
COMMANDS = {"encode": cmd_encode, "models": cmd_models, "config": cmd_config, "serve": cmd_serve,
            "bench": cmd_bench,
            "field-bench": cmd_field_bench, "calibrate": cmd_calibrate, "engines": cmd_engines}


def main(argv: list[str] | None = None) -> int:
    from .stop import exit_status, stop_on_signals

    stop_on_signals()  # first: a stop during start-up is reported like any other
    if "serve" in (sys.argv[1:] if argv is None else argv)[:1]:
        # SIGHUP asks serve for a reload, during the start-up too: done once it runs
        EARLY_RELOAD.clear()
        signal.signal(signal.SIGHUP, lambda signum, frame: EARLY_RELOAD.set())
    try:
        return _run(argv)
    except KeyboardInterrupt as e:  # stopped before a run began: nothing to keep
        print(f"edge-semvc: interrupted{f' ({e})' if str(e) else ''} before any frame was "
              f"encoded", file=sys.stderr)
        opening = sys.modules.get("edge_semvc.sources.opening")
        if argv is None and opening is not None and opening.open_abandoned():
            logging.shutdown()  # an input's open abandoned: not through finalization, where
            sys.stdout.flush()  # PyAV crashes (exit -11)
            sys.stderr.flush()
            os._exit(exit_status(e))
        return exit_status(e)


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="edge-semvc: %(message)s")
    for handler in logging.getLogger().handlers:  # a camera's URI may carry its password
        handler.addFilter(_hide_passwords)
    from .errors import EdgeSemvcError

    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 128 + signal.SIGPIPE
    except (EdgeSemvcError, OSError) as e:  # before the first frame: nothing was written
        _error(e)
        return EXIT_USAGE


def _hide_passwords(record: logging.LogRecord) -> bool:
    """A log record's text with every URI's password shown as '***' (uris.hide_passwords)."""
    from .uris import hide_passwords

    text = record.getMessage()
    if "://" in text:
        record.msg, record.args = hide_passwords(text), ()
    if record.exc_info and not record.exc_text:  # log.exception: the exception's text too
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text and "://" in record.exc_text:
        record.exc_text = hide_passwords(record.exc_text)
    return True


def _error(e: Exception) -> None:
    from .uris import hide_passwords

    print(f"edge-semvc: error: {hide_passwords(str(e))}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
