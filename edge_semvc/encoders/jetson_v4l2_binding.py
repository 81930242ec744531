"""The Jetson V4L2 encoder binding: cffi (API mode) compiled on the device against the JetPack's
``v4l2_nv_extensions.h`` and the kernel's ``linux/videodev2.h``, cached like the x264 binding.

Nothing about NVIDIA's structs or control IDs is hard-coded: they changed between JetPack
releases (``V4L2_CID_MPEG_VIDEOENC_ROI_PARAMS`` is MPEG_BASE+527 in the 2019 header and +530 in
the 2021 one; ``v4l2_enc_ROI_param`` gained reserved fields in R36 and R38), so the C glue
is compiled against the header found on the device and Python reads every control ID as
``lib.<NAME>``. libv4l2 (which routes the ioctls through NVIDIA's codec plugin) and the buffer
cache-sync library are opened with dlopen at run time, so building needs only the header.

The C declarations and glue are in ``jetson_v4l2_csrc.py``; the cached build and the header
search are ``cffi_build``'s.
"""
from __future__ import annotations

import logging

from .base import EncoderError
from .cffi_build import (
    Binding,
    BuildMessages,
    LinkSpec,
    compile_cached,
    find_header,
    header_missing,
)
from .jetson_v4l2_csrc import CDEF, CSRC

log = logging.getLogger("edge_semvc.encoders.jetson_v4l2")

HEADER = "v4l2_nv_extensions.h"
INCLUDE_ENV = "JETSON_MMAPI_INCLUDE"
# where JetPack's nvidia-l4t-jetson-multimedia-api package puts it (older releases: tegra_...)
MMAPI_DIRS = ("/usr/src/jetson_multimedia_api/include", "/usr/src/tegra_multimedia_api/include")
INSTALL_HINT = ("install the JetPack Multimedia API (sudo apt-get install "
                "nvidia-l4t-jetson-multimedia-api, which puts it in "
                "/usr/src/jetson_multimedia_api/include) or set JETSON_MMAPI_INCLUDE to the "
                "folder that holds it")


def header_path():
    return find_header(HEADER, INCLUDE_ENV, MMAPI_DIRS)


def build():
    """The compiled module (``.ffi``, ``.lib``); EncoderError naming the header when it is
    missing or does not compile."""
    header, dirs = header_path()
    if header is None:
        raise header_missing(HEADER, dirs, INSTALL_HINT)
    return compile_cached("_semvc_jetson_v4l2", CDEF, CSRC, [header],
                          link=LinkSpec(include_dirs=[str(header.parent)], libraries=["dl"]),
                          messages=BuildMessages("Jetson V4L2", INSTALL_HINT), log=log)


# (ffi, lib), compiled on first use; the run-time libraries are not needed for this
get_binding = Binding(build)


def load_runtime() -> None:
    """dlopen libv4l2 (and the buffer-sync library when there is one); EncoderError if not."""
    ffi, lib = get_binding()
    err = ffi.new("char[]", 512)
    if lib.semvc_v4l2_load(err, 512) != 0:
        raise EncoderError(ffi.string(err).decode(errors="replace") +
                           "; this backend runs on a Jetson with JetPack (libv4l2 with NVIDIA's "
                           "codec plugin)")
