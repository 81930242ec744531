"""The machine this runs on: a Jetson or not, which JetPack, which CSI cameras.

Everything is read from files under `root` ("/"; `$EDGE_SEMVC_PLATFORM_ROOT` or `--root` put a
fake Jetson's files elsewhere, for tests), following NVIDIA's Jetson Linux documentation (read,
not yet run on a Jetson):

- `/etc/nv_tegra_release`, written by Jetson Linux (L4T): its first line reads
  `# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ...`;
- the device-tree model (`/proc/device-tree/model`, `/sys/firmware/devicetree/base/model`), e.g.
  `NVIDIA Jetson Orin Nano Developer Kit`: enough on its own (a container without the release
  file);
- the L4T major release gives the JetPack: R32 JetPack 4, R35 JetPack 5, R36 JetPack 6
  (Ubuntu 22.04, Python 3.10), R38 JetPack 7 (Ubuntu 24.04, Python 3.12);
- CSI cameras are the V4L2 nodes of Jetson's video-input driver: `/sys/class/video4linux/
  videoN/name` reads `vi-output, <sensor> <i2c address>` (USB cameras show their own names).

Nothing here imports the rest of the project or a third-party package: the Makefile runs it with
the system's Python before any venv exists (`python3 -m edge_semvc.platform --venv-args`, and
`--camera` for the service's configuration).
Which backends a Jetson then gets is the pre-flight's question (`preflight.py`), not this one's.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT_ENV = "EDGE_SEMVC_PLATFORM_ROOT"
RELEASE_FILE = "etc/nv_tegra_release"
MODEL_FILES = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
JETPACK = {32: "4", 34: "5", 35: "5", 36: "6", 38: "7"}  # L4T major -> JetPack major
_RELEASE = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)")
# On a Jetson the venv also sees JetPack's own Python packages (TensorRT, pycuda, jetson-utils,
# built for the system's Python and numpy): they are never installed from PyPI over JetPack's.
JETSON_VENV_ARGS = "--system-site-packages"


@dataclass(frozen=True)
class Platform:
    jetson: bool
    reason: str  # how it was recognised, or why it is not a Jetson
    model: str | None = None  # device-tree model
    release: str | None = None  # the first line of /etc/nv_tegra_release, without its '# '
    l4t: str | None = None  # "36.4.3"
    jetpack: str | None = None  # "6"
    csi_cameras: tuple[str, ...] = ()  # "csi://0", ... (jetson-utils' URIs)

    def describe(self) -> str:
        if not self.jetson:
            return f"not a Jetson ({self.reason})"
        what = [self.model or "a Jetson"]
        if self.l4t:
            what.append(f"L4T {self.l4t}" + (f" (JetPack {self.jetpack})" if self.jetpack else ""))
        what.append(", ".join(self.csi_cameras) if self.csi_cameras else "no CSI camera")
        return "; ".join(what)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip().strip("\x00").strip() or None
    except OSError:
        return None


def default_root() -> str:
    return os.environ.get(ROOT_ENV) or "/"


def detect(root: str | os.PathLike | None = None) -> Platform:
    base = Path(root or default_root())
    model = next(filter(None, (_read(base / p) for p in MODEL_FILES)), None)
    first = (_read(base / RELEASE_FILE) or "").splitlines()[:1]
    release = first[0].lstrip("# ").strip() if first else None
    if not release and not (model and "jetson" in model.lower()):
        return Platform(False, f"no /{RELEASE_FILE} and the device-tree model is "
                               + (repr(model) if model else "absent"), model)
    l4t = jetpack = None
    m = _RELEASE.search(release or "")
    if m:
        l4t = f"{m.group(1)}.{m.group(2)}"
        jetpack = JETPACK.get(int(m.group(1)))
    reason = f"/{RELEASE_FILE}" if release else "the device-tree model"
    return Platform(True, reason, model, release, l4t, jetpack, csi_cameras(base))


def csi_cameras(base: Path) -> tuple[str, ...]:
    """jetson-utils' `csi://N` for each video-input (CSI) node, in the order of their names."""
    names = []
    for node in sorted((base / "sys/class/video4linux").glob("video*"),
                       key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else 1 << 30):
        name = _read(node / "name") or ""
        if name.startswith("vi-output"):
            names.append(name)
    return tuple(f"csi://{i}" for i in range(len(names)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.platform",
                                description="What this machine is (Jetson or not) as JSON.")
    p.add_argument("--root", help=f"read the machine's files under this folder (default "
                                  f"${ROOT_ENV} or /)")
    p.add_argument("--venv-args", action="store_true",
                   help=f"print the `python -m venv` arguments this machine needs "
                        f"({JETSON_VENV_ARGS} on a Jetson, nothing elsewhere)")
    p.add_argument("--camera", action="store_true",
                   help="print the camera a service here records by default: the first CSI "
                        "camera of a Jetson (csi://0), else nothing")
    args = p.parse_args(argv)
    plat = detect(args.root)
    if args.venv_args:
        print(JETSON_VENV_ARGS if plat.jetson else "")
    elif args.camera:
        print(plat.csi_cameras[0] if plat.csi_cameras else "")
    else:
        print(json.dumps(asdict(plat), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
