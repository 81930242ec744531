"""`/metrics`: every camera's figures in Prometheus' text format, through prometheus_client.

Made at each scrape from the latest `web.Figures` values (no metric object lives in a frame
loop). Counters are the service's own totals since it started: frames, drops, reconnects and
the storage profile's decisions, over a camera lost and back and over a reload that restarted
it (`stats.Carried`): they never go back; the latency histograms are gauge histograms over
the last frames (the window `/api/stats` reports p50/p95 of: serve/camera.py TIMING_WINDOW),
not cumulative counts.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
)

# upper bounds (seconds) of the latency buckets: a frame interval at 60 fps to a few seconds
LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
STATES = ("starting", "running", "lost", "failed", "ended", "stopped")


class _Figures:
    """A prometheus_client collector over one set of figures."""

    def __init__(self, figures: dict):
        self.figures = figures

    def collect(self):
        g = _Families()
        for cam, f in self.figures.items():
            s = f.stats
            g.counter("frames", "Frames encoded", [cam], s["frames"])
            g.counter("dropped_frames", "Frames dropped before the pipeline (late or lost)",
                      [cam], s["dropped_frames"])
            g.gauge("fps", "Frames per second over the last interval", [cam], s["fps"])
            g.gauge("bitrate_bits_per_second", "Encoded bitrate over the last interval", [cam],
                    s["bitrate_kbps"] * 1e3)
            if s.get("target_kbps"):
                g.gauge("target_bitrate_bits_per_second", "The encoder's target bitrate",
                        [cam], s["target_kbps"] * 1e3)
            for state in STATES:
                g.gauge("camera_state", "1 for the camera's current state", [cam, state],
                        float(s["state"] == state), ("camera", "state"))
            g.counter("reconnects", "Runs restarted after the input or a sink failed", [cam],
                      s["reconnects"])
            for stage, values in f.latency_ms.items():
                g.histogram(cam, stage, values)
            for cls, share in (s.get("label_coverage") or {}).items():
                g.gauge("label_coverage_ratio", "Share of macroblocks labelled as the class",
                        [cam, cls], share, ("camera", "class"))
            for model, frames in (s.get("label_staleness_frames") or {}).items():
                if frames is not None:
                    g.gauge("label_age_frames", "Mean age of the labels used, in frames",
                            [cam, model], frames, ("camera", "model"))
            storage = s.get("storage")
            if storage:
                g.counter("storage_frames_skipped", "Frames the storage profile left out",
                          [cam], storage["frames_skipped"])
                for reason, n in storage["idr_reasons"].items():
                    g.counter("storage_idrs", "IDRs placed by the storage profile, by reason",
                              [cam, reason], n, ("camera", "reason"))
            for out in [o for o in s.get("outputs") or [] if "clients" in o]:
                g.gauge("output_clients", "Receivers connected to a stream output",
                        [cam, out.get("uri", "")], out["clients"],
                        ("camera", "output"))
        yield from g.families.values()


class _Families:
    """Metric families by name, filled a sample at a time."""

    def __init__(self):
        self.families: dict = {}

    def _family(self, cls, name, doc, labels, **kw):
        full = f"edge_semvc_{name}"
        if full not in self.families:
            self.families[full] = cls(full, doc, labels=list(labels), **kw)
        return self.families[full]

    def gauge(self, name, doc, values, value, labels=("camera",)) -> None:
        if value is not None:
            self._family(GaugeMetricFamily, name, doc, labels).add_metric(values, float(value))

    def counter(self, name, doc, values, value, labels=("camera",)) -> None:
        self._family(CounterMetricFamily, name, doc, labels).add_metric(values, float(value))

    def histogram(self, cam: str, stage: str, values_ms) -> None:
        seconds = [v / 1e3 for v in values_ms]
        buckets = [(str(b), float(sum(1 for v in seconds if v <= b))) for b in LATENCY_BUCKETS_S]
        buckets.append(("+Inf", float(len(seconds))))
        self._family(GaugeHistogramMetricFamily, "latency_seconds",
                     "Latency over the last frames: end_to_end (capture to encoded) and each "
                     "pipeline stage", ("camera", "stage")).add_metric(
            [cam, stage], buckets, sum(seconds))


def exposition(figures: dict) -> bytes:
    """The text format of `figures` ({camera: web.Figures})."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(figures))
    return generate_latest(registry)
