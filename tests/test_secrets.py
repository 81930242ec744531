"""Secrets never reach the log or an error: a camera URI's password in a logged traceback, a
passphrase or password in an output URI's query (the real CLI)."""
from __future__ import annotations

import subprocess
import sys

import pytest


def test_a_logged_traceback_hides_a_uris_password():
    """log.exception (a camera's pipeline that failed on a bug) writes the exception's text,
    which PyAV makes of the URI it opened: its password is '***' there too, as in the line."""
    import io
    import logging

    from edge_semvc.cli import _hide_passwords

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(_hide_passwords)
    log = logging.getLogger("edge_semvc.test_traceback")
    log.addHandler(handler)
    try:
        raise OSError("Invalid data found when processing input: 'rtsp://bob:S3cret@cam/x'")
    except OSError:
        log.exception("gate: the pipeline failed")
    finally:
        log.removeHandler(handler)
    assert "rtsp://bob:***@cam/x" in out.getvalue() and "Traceback" in out.getvalue()
    assert "S3cret" not in out.getvalue()


@pytest.mark.parametrize("uri, said", [
    ("srt://127.0.0.1:9?PassPhrase=S3cret-S3cret", "does not belong in the URI"),
    ("udp://127.0.0.1:9?Password=S3cret-S3cret&pkt_size=1316", "?Password=***&pkt_size"),
])
def test_a_secret_in_an_outputs_query_is_refused_without_quoting_it(uri, said):
    """A passphrase or password in a URI's query, in any case, is '***' in the error (it was
    quoted whole: `unknown option 'PassPhrase' in output 'srt://…?PassPhrase=S3cret…'`)."""
    r = subprocess.run([sys.executable, "-m", "edge_semvc", "encode", "demo://astronaut", uri,
                        "--frames", "1", "--no-map"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and said in r.stderr, r.stderr
    assert "S3cret" not in r.stderr
