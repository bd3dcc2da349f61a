"""``python -m torchinit``: the same as the ``torchinit`` command (see :mod:`torchinit.cli.commands`).

One difference: ``python -m`` imports this package, and with it torch, before this module runs, so a Ctrl-C in
those seconds ends Python with a traceback that nothing here can catch. The ``torchinit`` command's entry point
(``_torchinit_cli``, outside the package) catches it: one line, status 130.
"""

import sys

from torchinit.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
