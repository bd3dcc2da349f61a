"""Build step for the one compiled piece: the keyed RNG kernel (src/torchinit/rng/_philox.c).

It is a plain C shared library loaded with ctypes (no Python or torch API, no Python headers needed), built as
an optional extension: where no C compiler is available the install still succeeds, and torchinit.rng.keyed
computes the same stream with torch operations, more slowly (``torchinit.rng.keyed.KERNEL`` is None, and
``torchinit.rng.keyed.KERNEL_STATUS`` says why). Because the library does not depend on the Python version, the
wheel is tagged ``py3-none-<platform>``: one wheel per platform for every supported Python. Everything else about
the package is in pyproject.toml.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

#: The library's file name suffix on this platform (no Python ABI tag: it is not an extension module).
SUFFIX = ".dll" if sys.platform == "win32" else ".dylib" if sys.platform == "darwin" else ".so"


class BuildLibrary(build_ext):
    """Compile and link each extension as a plain shared library named ``<name><SUFFIX>``."""

    def get_ext_filename(self, fullname: str) -> str:
        return os.path.join(*fullname.split(".")) + SUFFIX

    def build_extension(self, ext: Extension) -> None:
        try:
            objects = self.compiler.compile(ext.sources, output_dir=self.build_temp,
                                            extra_postargs=ext.extra_compile_args)
            self.compiler.link_shared_object(objects, self.get_ext_fullpath(ext.name), libraries=ext.libraries,
                                             export_symbols=None, build_temp=self.build_temp)
        except Exception as err:  # optional: the install goes on without it, and says so
            print(f"torchinit: the C kernel was not built ({type(err).__name__}: {err}); the keyed random stream "
                  "uses torch operations instead (the same bits, slower)", file=sys.stderr)
            raise


class PlatformWheel(bdist_wheel):
    """A wheel for one platform and every Python 3: the library does not use the Python C API."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    ext_modules=[
        Extension(
            "torchinit.rng._philox",
            sources=["src/torchinit/rng/_philox.c"],
            # -ffp-contract=off: no fused multiply-add, so the values are the reference's bit for bit
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-std=c99", "-fPIC"],
            libraries=["m"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildLibrary, "bdist_wheel": PlatformWheel},
)
