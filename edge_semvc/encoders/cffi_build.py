"""The cached cffi build the encoder bindings share (x264, x265, NVENC, Jetson V4L2): cffi in API
(out-of-line) mode, compiled against the headers installed here on first use and cached in
``$EDGE_SEMVC_CACHE/cffi`` (default ``~/.cache/edge_semvc/cffi``) under a name that hashes the
declarations, the C glue, the headers and the Python ABI, so a binding is rebuilt only when one of
them changes (e.g. another library build on a Jetson). Each cached module has its sha256 recorded
beside it and is rebuilt, not loaded, when that no longer matches (loading a truncated ``.so``
can crash the process with SIGBUS). Also here: the header search, pkg-config, reading a C array of
names, and the once-per-process load.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..checksums import intact, record
from .base import EncoderError


def cache_dir() -> Path:
    """Where compiled bindings live: ``$EDGE_SEMVC_CACHE/cffi`` or ``~/.cache/edge_semvc/cffi``."""
    root = os.environ.get("EDGE_SEMVC_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "edge_semvc"
    return base / "cffi"


# --- finding the library -----------------------------------------------------------------------

def pkg_config(package: str) -> dict[str, list[str]]:
    """``include_dirs``, ``library_dirs`` and ``libraries`` from ``pkg-config --cflags --libs``
    (empty where pkg-config or the package's .pc file is missing); ``libraries`` always names
    ``package``."""
    out: dict[str, list[str]] = {"include_dirs": [], "library_dirs": [], "libraries": []}
    exe = shutil.which("pkg-config")
    if exe:
        try:
            res = subprocess.run([exe, "--cflags", "--libs", package], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            res = None
        if res is not None and res.returncode == 0:
            for tok in res.stdout.split():
                for flag, key in (("-I", "include_dirs"), ("-L", "library_dirs"),
                                  ("-l", "libraries")):
                    if tok.startswith(flag):
                        out[key].append(tok[2:])
    if package not in out["libraries"]:
        out["libraries"].append(package)
    return out


def header_dirs(extra: Sequence[str] = (), env: str | None = None) -> list[Path]:
    """The folders to look for a header in, in order: ``$env`` (when set), ``extra``, then the
    compiler's usual places (``C_INCLUDE_PATH``, ``CPATH``, /usr/local/include, /usr/include and
    their multiarch folders)."""
    dirs = [Path(os.environ[env])] if env and os.environ.get(env) else []
    dirs += [Path(d) for d in extra]
    for var in ("C_INCLUDE_PATH", "CPATH"):
        dirs += [Path(d) for d in os.environ.get(var, "").split(os.pathsep) if d]
    dirs += [Path("/usr/local/include"), Path("/usr/include")]
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    if multiarch:
        dirs += [Path("/usr/local/include") / multiarch, Path("/usr/include") / multiarch]
    return dirs


def find_file(name: str, dirs: Sequence[Path]) -> Path | None:
    """The first ``dir/name`` that is a file, or None."""
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def find_header(name: str, env: str, extra: Sequence[str]) -> tuple[Path | None, list[Path]]:
    """(path of ``name`` or None, the folders looked in): ``$env`` first, then ``extra``, then
    the compiler's usual places."""
    dirs = header_dirs(extra, env)
    return find_file(name, dirs), dirs


def header_missing(name: str, dirs: Sequence[Path], hint: str) -> EncoderError:
    """The error for a header found in none of ``dirs``."""
    return EncoderError(f"{name} not found (looked in {', '.join(map(str, dirs))}); {hint}")


# --- the cached build --------------------------------------------------------------------------

def module_name(prefix: str, cdef: str, csrc: str, headers: Sequence[Path | None]) -> str:
    """``<prefix>_<16 hex digits>``: a sha256 over the declarations, the C glue, each header's
    contents (None: an absent optional header), the Python ABI and the cffi version."""
    h = hashlib.sha256()
    for part in (cdef.encode(), csrc.encode(), *(p.read_bytes() if p else b"" for p in headers),
                 (sysconfig.get_config_var("EXT_SUFFIX") or "").encode()):
        h.update(part)
        h.update(b"\0")
    try:
        import cffi
        h.update(cffi.__version__.encode())
    except ImportError:  # pragma: no cover - reported by compile_cached
        pass
    return f"{prefix}_{h.hexdigest()[:16]}"


def load_module(name: str, path: Path):
    """Import the compiled extension module ``name`` from ``path``."""
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


@dataclass(frozen=True)
class LinkSpec:
    """Where the binding's C glue finds its headers and libraries (cffi's ``set_source``)."""

    include_dirs: Sequence[str] = ()
    libraries: Sequence[str] = ()
    library_dirs: Sequence[str] = ()


@dataclass(frozen=True)
class BuildMessages:
    """How a binding's build errors read: they name the ``what`` binding and end in ``hint``
    (``compiler_hint`` when no C compiler is found; default ``install gcc (hint)``)."""

    what: str
    hint: str
    compiler_hint: str | None = None


def compile_cached(prefix: str, cdef: str, csrc: str, headers: Sequence[Path | None], *,
                   link: LinkSpec, messages: BuildMessages, log: logging.Logger):
    """The cffi module for ``cdef``/``csrc``, named by :func:`module_name`, built once into the
    cache folder and reused; a cached file that fails its recorded sha256 or does not load is
    rebuilt. Builds go to a temporary folder beside the cache and are moved in with an atomic
    rename, so concurrent builders race harmlessly. Raises EncoderError worded by
    ``messages``."""
    what, hint = messages.what, messages.hint
    try:
        import cffi
    except ImportError as e:
        raise EncoderError(f"cffi is not installed ({e}); pip install cffi") from e
    name = module_name(prefix, cdef, csrc, headers)
    folder = cache_dir()
    target = folder / (name + importlib.machinery.EXTENSION_SUFFIXES[0])
    if target.is_file():
        if not intact(target):  # loading a truncated .so can crash the process (SIGBUS)
            log.warning("cached %s binding %s does not match the sha256 recorded when it was "
                        "built (damaged?); rebuilding", what, target)
        else:
            try:
                return load_module(name, target)
            except ImportError as e:  # stale or broken file: rebuild below
                log.warning("cached %s binding %s failed to load (%s); rebuilding", what, target, e)
    if not (shutil.which(os.environ.get("CC", "gcc").split()[0]) or shutil.which("cc")):
        raise EncoderError(f"no C compiler found to build the {what} binding; "
                           f"{messages.compiler_hint or f'install gcc ({hint})'}")
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source(name, csrc, include_dirs=list(link.include_dirs),
                   libraries=list(link.libraries), library_dirs=list(link.library_dirs))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=folder))
    except OSError as e:
        raise EncoderError(f"cannot write the binding cache folder {folder} ({e}); point "
                           "EDGE_SEMVC_CACHE at a writable folder") from e
    try:
        log.info("building the %s binding %s against %s (header changed or first use)", what,
                 name, ", ".join(str(p) for p in headers if p))
        try:
            built = Path(ffi.compile(tmpdir=str(tmp), verbose=False))
        except Exception as e:  # CompileError, LinkError, VerificationError, ...
            raise EncoderError(f"building the {what} binding failed ({type(e).__name__}: {e}); "
                               f"{hint}") from e
        record(built)
        os.replace(built.with_name(built.name + ".sha256"),
                   target.with_name(target.name + ".sha256"))
        os.replace(built, target)  # atomic: concurrent builders race harmlessly
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        return load_module(name, target)
    except ImportError as e:
        raise EncoderError(f"loading the {what} binding {target} failed ({e}); {hint}") from e


def compile_library(package: str, prefix: str, cdef: str, csrc: str, *, hint: str,
                    log: logging.Logger, find: Callable[..., Path | None] = find_file):
    """:func:`compile_cached` against a library that pkg-config may know (``package``), with its
    header ``<package>.h`` and an optional ``<package>_config.h`` (both hashed into the name),
    looked up with ``find``. ``hint`` (how to install the library and gcc) ends every error."""
    pc = pkg_config(package)
    dirs = header_dirs(pc["include_dirs"])
    header = find(f"{package}.h", dirs)
    if header is None:
        raise header_missing(f"{package}.h", dirs, hint)
    config_h = find(f"{package}_config.h", dirs)
    link = LinkSpec(include_dirs=[str(header.parent), *pc["include_dirs"]],
                    libraries=pc["libraries"], library_dirs=pc["library_dirs"])
    return compile_cached(prefix, cdef, csrc, [header, config_h], link=link,
                          messages=BuildMessages(package, hint, compiler_hint=hint), log=log)


# --- using it ----------------------------------------------------------------------------------

class Binding:
    """A binding's ``(ffi, lib)``, built or loaded by ``build`` (which returns the compiled
    module) on first call and kept for the process; ``setup(ffi, lib)`` runs once before it is
    handed out (to define ``extern "Python"`` callbacks, say). ``loaded`` is None until then."""

    def __init__(self, build: Callable[[], object],
                 setup: Callable[[object, object], None] | None = None):
        self._build, self._setup = build, setup
        self._lock = threading.Lock()
        self.loaded: tuple | None = None

    def __call__(self) -> tuple:
        if self.loaded is None:
            with self._lock:
                if self.loaded is None:
                    mod = self._build()
                    if self._setup is not None:
                        self._setup(mod.ffi, mod.lib)
                    self.loaded = (mod.ffi, mod.lib)
        return self.loaded


def c_names(binding: Binding, accessor: str) -> list[str]:
    """The strings ``lib.<accessor>(0)``, ``(1)``, ... up to the first NULL: a NULL-terminated C
    array of names (presets, tunes, profiles) read through the binding's accessor."""
    ffi, lib = binding()
    fn = getattr(lib, accessor)
    out, i = [], 0
    while True:
        p = fn(i)
        if p == ffi.NULL:
            return out
        out.append(ffi.string(p).decode())
        i += 1
