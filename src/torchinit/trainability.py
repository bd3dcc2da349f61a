"""Training experiments (``torchinit train``).

``torchinit.trainability`` is :mod:`torchinit.diagnostics.trainability` itself.
"""

import sys

from torchinit.diagnostics import trainability as _trainability

sys.modules[__name__] = _trainability  # the import system hands out the module placed here (all names, monkeypatching)
