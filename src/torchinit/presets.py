"""Ready-made policies for well-known models: ``torchinit.presets`` is :mod:`torchinit.model.presets` itself."""

import sys

from torchinit.model import presets as _presets

sys.modules[__name__] = _presets  # the import system hands out the module placed here (all names, monkeypatching)
