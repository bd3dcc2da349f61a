"""Training experiments (``torchinit train``): the public path of :mod:`torchinit.diagnostics.trainability`."""

from torchinit.diagnostics.trainability import *  # noqa: F403
from torchinit.diagnostics.trainability import __all__  # noqa: F401
