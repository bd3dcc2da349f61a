"""``python -m torchinit``: the same as the ``torchinit`` command (see :mod:`torchinit.cli`)."""

import sys

from torchinit.cli import main

if __name__ == "__main__":
    sys.exit(main())
