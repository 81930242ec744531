"""Every supported target installs its pins from binary wheels only (README, "Platforms").

For each target, pip resolves the lock `make` would use there (`requirements/pyXY.txt` for that
Python where one exists, else `requirements.txt`) with the target's interpreter and platform tags:
`pip install --dry-run --ignore-installed --only-binary=:all: --python-version X.Y --abi cpXY
--platform manylinux_2_N_ARCH ... --target EMPTY -r LOCK`. That is the whole dependency tree
`make` would install there, resolved as on the device; only each wheel's metadata is fetched and
nothing is installed. A pin (or a dependency) without a wheel for one target fails the check and
names both. A result is kept in `.cache/wheels/` under a key of the lock, the target and pip's
version, so a run where nothing changed asks nobody.

Also checked: every lock names the same packages, and none names what JetPack brings itself
(TensorRT, pycuda, jetson-utils, CUDA): pip never installs those over JetPack's.

    .venv/bin/python scripts/check_wheels.py [--target NAME] [--root DIR] [--cache DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    name: str
    python: str  # "3.10"
    arch: str  # uname -m
    glibc: int  # the distribution's glibc 2.N: wheels up to manylinux_2_N install there

    def lock(self, root: Path) -> Path:
        """The same choice as the Makefile's `lock_for`."""
        own = root / "requirements" / f"py{self.python.replace('.', '')}.txt"
        return own if own.exists() else root / "requirements.txt"

    def platforms(self) -> list[str]:
        tags = [f"manylinux_2_{n}_{self.arch}" for n in range(self.glibc, 16, -1)]
        legacy = ["manylinux2014", "manylinux2010", "manylinux1"]
        return tags + [f"{t}_{self.arch}" for t in legacy[:1 if self.arch != "x86_64" else 3]]


TARGETS = (
    Target("JetPack 6 (Jetson Orin, Ubuntu 22.04)", "3.10", "aarch64", 35),
    Target("JetPack 7 (Jetson Thor, Ubuntu 24.04)", "3.12", "aarch64", 39),
    Target("Ubuntu 22.04 PC", "3.10", "x86_64", 35),
    Target("Ubuntu 24.04 PC", "3.12", "x86_64", 39),
    Target("Debian 12 PC", "3.11", "x86_64", 36),
    Target("Debian 13 PC", "3.13", "x86_64", 41),
)
# What JetPack brings for its own Python: never a pin (pip would install it over JetPack's)
JETPACK_OWN = re.compile(r"^(tensorrt.*|pycuda|jetson[-_].*|onnxruntime-gpu|cuda-python|cupy.*"
                         r"|nvidia-.*)$", re.I)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)")


def pins(lock: Path) -> dict[str, str]:
    out = {}
    for line in lock.read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def check_locks(root: Path) -> list[str]:
    """Problems with the set of locks themselves (same packages everywhere, none of JetPack's)."""
    locks = [root / "requirements.txt", *sorted((root / "requirements").glob("py*.txt"))]
    names = {lock: set(pins(lock)) for lock in locks if lock.exists()}
    problems = []
    base = names.get(root / "requirements.txt", set())
    for lock, have in names.items():
        rel = lock.relative_to(root)
        if have != base:
            problems.append(f"{rel} and requirements.txt name different packages: "
                            f"{sorted(have ^ base)}")
        problems += [f"{rel} pins {n}, which JetPack brings itself: remove it"
                     for n in sorted(have) if JETPACK_OWN.match(n)]
    return problems


def pip_version() -> str:
    import pip

    return pip.__version__


def resolve(target: Target, lock: Path) -> dict[str, str]:
    """{package: version} pip picks for `target` from wheels only; RuntimeError with pip's
    reason when something has no wheel there."""
    py = target.python.replace(".", "")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
               "--python-version", target.python, "--implementation", "cp", "--abi", f"cp{py}",
               *(a for p in target.platforms() for a in ("--platform", p)),
               "--target", str(Path(tmp) / "target"), "--report", str(report), "-r", str(lock)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            why = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")] or \
                r.stderr.strip().splitlines()[-3:]
            raise RuntimeError("; ".join(why) or f"pip exited {r.returncode}")
        items = json.loads(report.read_text())["install"]
    not_wheels = [i["download_info"]["url"] for i in items
                  if not i["download_info"]["url"].endswith(".whl")]
    if not_wheels:
        raise RuntimeError(f"not wheels: {not_wheels}")
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in items}


def check_target(target: Target, root: Path, cache: Path) -> tuple[str, dict[str, str], bool]:
    """(lock used, versions, from the cache)."""
    lock = target.lock(root)
    key = hashlib.sha256(json.dumps([lock.read_text(), target.python, target.arch,
                                     target.platforms(), pip_version()]).encode()).hexdigest()
    slug = re.sub(r"[^a-z0-9]+", "-", target.name.lower()).strip("-")
    kept = cache / f"{slug}-{key[:16]}.json"
    if kept.exists():
        return str(lock.relative_to(root)), json.loads(kept.read_text()), True
    versions = resolve(target, lock)
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob(f"{slug}-*.json"):
        old.unlink()
    kept.write_text(json.dumps(versions, indent=1, sort_keys=True) + "\n")
    return str(lock.relative_to(root)), versions, False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout (its locks)")
    p.add_argument("--cache", type=Path, help="results kept here (default ROOT/.cache/wheels)")
    p.add_argument("--target", action="append", default=[],
                   help="check only targets whose name contains this (repeatable)")
    args = p.parse_args(argv)
    root = args.root.resolve()
    cache = args.cache or root / ".cache" / "wheels"
    failed = check_locks(root)
    for problem in failed:
        print(f"wheels: {problem}", file=sys.stderr)
    for target in TARGETS:
        if args.target and not any(t.lower() in target.name.lower() for t in args.target):
            continue
        try:
            lock, versions, cached = check_target(target, root, cache)
        except RuntimeError as e:
            failed.append(target.name)
            print(f"wheels: {target.name}, Python {target.python} {target.arch}: "
                  f"{target.lock(root).relative_to(root)} does not install from wheels "
                  f"only: {e}", file=sys.stderr)
            continue
        print(f"wheels: {target.name}, Python {target.python} {target.arch}: {lock}, "
              f"{len(versions)} wheels{' (unchanged)' if cached else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
