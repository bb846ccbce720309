"""Keep the README's configuration table equal to `penny config` (a test checks it)."""

from __future__ import annotations

from pathlib import Path

from penny.config_table import configuration_table

README = Path(__file__).parent.parent / "README.md"
START = "<!-- configuration-table:start -->"
END = "<!-- configuration-table:end -->"


def readme_with_current_table(readme_text: str) -> str:
    before, rest = readme_text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{configuration_table()}\n{END}{after}"


if __name__ == "__main__":
    README.write_text(readme_with_current_table(README.read_text()))
