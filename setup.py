"""The optional native CPU projector (``jaxdrr/ops/csrc/project_cpu.cc``); all metadata is in pyproject.toml.

The library is a plain shared object loaded with ctypes and registered as an XLA FFI target
(``jaxdrr.ops.native_project``), not a Python extension module: it does not link against Python,
so one build serves every Python version, and it gets the fixed name
``jaxdrr/ops/_project_cpu.so``. Without a working C++17 compiler the build is skipped with a
one-line notice and jaxdrr installs with the pure-JAX (XLA) projector.

Flags are portable (no ``-march=native``): ``-O3``; the float32 loops also get an AVX2/FMA
variant chosen at run time (``__attribute__((target))`` in the source).
"""

import os
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = "jaxdrr.ops._project_cpu"
SKIPPED = "jaxdrr: native CPU projector not built ({}); the pure-JAX projector will be used."


class BuildNative(build_ext):
    def get_ext_filename(self, fullname):
        # Called with the full or the last part of the dotted name: not a Python module, so no
        # Python ABI tag in the file name.
        name = super().get_ext_filename(fullname)
        if fullname.split(".")[-1] == NATIVE.split(".")[-1]:
            suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
            if name.endswith(suffix):
                name = name[: -len(suffix)] + ".so"
        return name

    def get_export_symbols(self, ext):
        return [] if ext.name == NATIVE else super().get_export_symbols(ext)

    def build_extension(self, ext):
        if ext.name != NATIVE:
            return super().build_extension(ext)
        if os.environ.get("JAXDRR_NO_NATIVE", "") not in ("", "0"):
            print(SKIPPED.format("JAXDRR_NO_NATIVE is set"), file=sys.stderr)
            return None
        if self.compiler.compiler_type != "unix":
            print(
                SKIPPED.format(f"{self.compiler.compiler_type} compilers are not supported"), file=sys.stderr
            )
            return None
        try:
            return super().build_extension(ext)
        except Exception as e:  # no compiler, no C++17, ...: install without it
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            print(SKIPPED.format(reason), file=sys.stderr)
            return None


# -isystem: the vendored XLA FFI headers (jaxlib 0.10.2) are not ours to warn about.
FLAGS = ["-std=c++17", "-O3", "-g0", "-fvisibility=hidden", "-pthread", "-isystem", "jaxdrr/ops/csrc/xla_ffi"]

setup(
    ext_modules=[
        Extension(
            NATIVE,
            sources=["jaxdrr/ops/csrc/project_cpu.cc"],
            depends=[
                "jaxdrr/ops/csrc/xla_ffi/xla/ffi/api/api.h",
                "jaxdrr/ops/csrc/xla_ffi/xla/ffi/api/c_api.h",
                "jaxdrr/ops/csrc/xla_ffi/xla/ffi/api/ffi.h",
            ],
            language="c++",
            extra_compile_args=FLAGS,
            extra_link_args=["-pthread"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildNative},
)
