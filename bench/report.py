"""What every benchmark prints: its command line, a plain-text table, ratios, or the same as JSON.

A figure is only ever shown next to the baseline it is compared with, measured in the same
run: the absolute numbers depend on the machine, the ratios are what to read. Nothing here
judges a figure good or bad, and nothing here measures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One measured figure: `value` in `unit`, plus whatever explains it (`extra`)."""

    section: str
    label: str
    value: float | None
    unit: str
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ratio:
    """`numerator / denominator`, both row labels of the same run."""

    label: str
    numerator: str
    denominator: str
    value: float | None


@dataclass
class Report:
    name: str
    quick: bool
    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        section: str,
        label: str,
        value: float | None,
        unit: str,
        detail: str = "",
        **extra: Any,
    ) -> Row:
        row = Row(section, label, value, unit, detail, extra)
        self.rows.append(row)
        return row

    def value(self, label: str, key: str | None = None) -> float | None:
        """A row's value, or the figure `key` of its `extra`."""
        for row in self.rows:
            if row.label == label:
                return row.value if key is None else row.extra[key]
        raise KeyError(label)

    def ratio(self, label: str, numerator: str, denominator: str, key: str | None = None) -> Ratio:
        """Add `numerator / denominator` (row labels; `key` picks a figure of their `extra`)."""
        top, bottom = self.value(numerator, key), self.value(denominator, key)
        value = top / bottom if top is not None and bottom else None
        ratio = Ratio(label, numerator, denominator, value)
        self.ratios.append(ratio)
        return ratio

    def note(self, text: str) -> None:
        self.notes.append(text)

    def emit(self, as_json: bool) -> None:
        """Print the report to stdout, as JSON or as a table; and as JSON to `--json-file`."""
        if as_json:
            print(json.dumps(self.as_dict(), indent=2))
        else:
            print(self.render())
        if _json_file is not None:
            Path(_json_file).write_text(json.dumps(self.as_dict(), indent=2) + "\n")

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "quick": self.quick,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "rows": [asdict(row) for row in self.rows],
            "ratios": [asdict(ratio) for ratio in self.ratios],
            "notes": self.notes,
        }

    def render(self) -> str:
        lines = [f"{self.name}{'  (--quick: short runs, noisy figures)' if self.quick else ''}"]
        width = max(len(row.label) for row in self.rows) if self.rows else 0
        section = None
        for row in self.rows:
            if row.section != section:
                section = row.section
                lines += ["", section]
            lines.append(f"  {row.label.ljust(width)}  {_figure(row):>18}  {row.detail}".rstrip())
        if self.ratios:
            lines += ["", "ratios"]
            ratio_width = max(len(r.label) for r in self.ratios)
            for r in self.ratios:
                shown = "n/a" if r.value is None else f"{r.value:.3g}"
                lines.append(f"  {r.label.ljust(ratio_width)}  {shown:>8}")
        if self.notes:
            lines += ["", *(f"note: {text}" for text in self.notes)]
        return "\n".join(lines)


def _figure(row: Row) -> str:
    if row.value is None:
        return "-"
    value = row.value
    shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{shown} {row.unit}"


def parse_args(
    description: str,
    argv: list[str] | None = None,
    extend: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The options every benchmark takes (`--quick`, `--json`), plus any `extend` adds."""
    parser = argparse.ArgumentParser(description=description)
    if extend is not None:
        extend(parser)
    parser.add_argument(
        "--quick", action="store_true", help="a ~10 s smoke run (figures are noisy)"
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument(
        "--json-file", metavar="PATH", help="also write the results as JSON to PATH"
    )
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    global _json_file
    _json_file = args.json_file
    return args


_json_file: str | None = None
"""Where `emit` also writes the JSON (`--json-file`): one run gives the table and the figures."""
