"""``python -m torchinit``: the same as the ``torchinit`` command (see :mod:`torchinit.cli.commands`)."""

import sys

from torchinit.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
