"""Write ``digests.json``: the golden value of every case of ``cases.py``, one case per line, sorted by name.

Run from the repository root::

    .venv/bin/python tests/golden/make_golden.py                     # only where no digests.json exists yet
    .venv/bin/python tests/golden/make_golden.py --output /tmp/g.json  # anywhere else, e.g. to compare two runs

``digests.json`` was recorded on the code before torchinit was restructured into sub-packages;
it must never be regenerated to make ``test_golden.py`` pass. The script therefore refuses to
overwrite an existing file unless ``--force`` is given (for a deliberate change of the values,
reviewed as such). Every case is computed: transformers and timm must be importable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import cases  # noqa: E402  (found through the sys.path entries above)

import _thirdparty  # noqa: E402, F401  (torchvision's tolerant import, before timm and transformers import it)

DEFAULT_OUTPUT = HERE / "digests.json"


def render(values: dict[str, cases.Value], environment: dict[str, str]) -> str:
    """The JSON text: the environment, then every case sorted by name, one ``"key": value`` per line."""
    entries = {cases.ENVIRONMENT_KEY: environment, **{name: values[name] for name in sorted(values)}}
    lines = [f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}" for key, value in entries.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where to write (default {DEFAULT_OUTPUT})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.force:
        parser.error(f"{args.output} exists; the golden values are never regenerated to make a test pass "
                     "(write elsewhere with --output, or pass --force for a reviewed change of the values)")
    text = render(cases.compute(), cases.environment())
    json.loads(text)  # well-formed
    args.output.write_text(text)
    print(f"{len(cases.all_cases())} cases written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
