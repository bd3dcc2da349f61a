"""Build step for the one compiled piece: the keyed RNG kernel (src/torchinit/rng/_philox.c).

It is a plain C shared library loaded with ctypes (no Python or torch API), built as an optional
extension: where no C compiler is available the install still succeeds, and torchinit.rng.keyed
computes the same stream with torch operations, more slowly (``torchinit.rng.keyed.KERNEL`` is None).
Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "torchinit.rng._philox",
            sources=["src/torchinit/rng/_philox.c"],
            # -ffp-contract=off: no fused multiply-add, so the values are the reference's bit for bit
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-std=c99"],
            libraries=["m"],
            optional=True,
        )
    ]
)
