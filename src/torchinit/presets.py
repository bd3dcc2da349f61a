"""Ready-made policies for well-known models: the public path of :mod:`torchinit.model.presets`."""

from torchinit.model.presets import *  # noqa: F403
from torchinit.model.presets import __all__  # noqa: F401
