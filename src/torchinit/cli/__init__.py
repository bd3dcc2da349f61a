"""The ``torchinit`` command (``compare``, ``probe``, ``train``): argument parsing and output only.

The entry point ``torchinit.cli:main`` is :func:`torchinit.cli.commands.main`.
"""

from torchinit.cli.commands import main

__all__ = ["main"]
