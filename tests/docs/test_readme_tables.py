"""The README's sample `torchinit compare` table is today's output, so it cannot go stale."""

import re
from pathlib import Path

from torchinit.cli.commands import main

README = Path(__file__).resolve().parents[2] / "README.md"


def _summary(text: str) -> list[str]:
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("scheme ") and "output std" in line)
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_the_readme_compare_table_is_todays_output(capsys):
    assert main(["compare"]) == 0
    got = _summary(capsys.readouterr().out)
    readme = README.read_text()
    block = readme[readme.index("then a summary:\n\n```\n") + len("then a summary:\n\n```\n"):]
    assert _summary(block[: block.index("\n```")]) == got
    # and the prose's ratios of the input gradient: glass rows against the default's
    norms = {line.split()[0]: float(line.split()[2]) for line in got[2:]}
    glass, isometric = (re.search(r"grows (\d+)× \(published glass\) and (\d+)× \(isometric\)", readme).groups())
    assert int(glass) == round(norms["glass"] / norms["default"])
    assert int(isometric) == round(norms["glass-isometric"] / norms["default"])
