"""The README's Python example is run as written, so it cannot drift from the API."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_example_runs(capsys) -> None:
    """The trainer-side example publishes a checkpoint that a registry then serves."""
    blocks = python_blocks()
    assert blocks, "README.md has no python example"
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    registry = namespace["registry"]
    assert registry.load_count == 1  # type: ignore[attr-defined]
    printed = capsys.readouterr().out.split()
    assert printed[0].startswith("actor_") and printed[2] == "50000"


def test_readme_shows_the_two_setup_commands() -> None:
    """A newcomer sees `make demo` and `make test` on the first screen."""
    first_screen = README.read_text().split("## ")[0]
    assert "make demo" in first_screen and "make test" in first_screen
    assert "curl" in first_screen
