"""How many frames the decoder holds behind the packets it was given, and its time per frame,
with frame threads (what a file gets) and without (what a camera gets: sources/pyav.py).

    .venv/bin/python scripts/decode_lag.py CLIP [PACKETS]
"""
import sys
import time

import av


def main(path: str, packets: int = 50) -> None:
    for threads in ("AUTO", "SLICE"):
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = threads
            given = out = 0
            cpu, wall = time.process_time(), time.perf_counter()
            for p in c.demux(s):
                if not p.size:
                    continue
                given += 1
                out += len(p.decode())
                if given == packets:
                    break
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(f"{threads:5} {s.codec_context.thread_count} threads: {given} packets, "
                  f"{out} frames out, {given - out} held; {cpu / given * 1e3:.1f} ms CPU, "
                  f"{wall / given * 1e3:.1f} ms wall a frame")


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
