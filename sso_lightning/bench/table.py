"""The bench's result: one row per comparison of our side with one baseline, as a Markdown table
and as JSON with the same figures. A figure is the median with [min–max] over the timed steps; the
ratio is ours over the baseline (throughput: higher is better; memory: lower is better)."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass

from sso_lightning.bench.timing import Stats

UNIT_SCALE = {"FLOP/s": (1e12, "TFLOP/s")}  # shown in a readable unit; JSON keeps the raw one


@dataclass(frozen=True)
class Figure:
    value: Stats  # the compared quantity: non-padding tokens/s, MiB or FLOP/s
    unit: str
    rate: Stats | None = None  # the same steps in items per second
    rate_unit: str = ""  # "pairs/s", "examples/s", ...


@dataclass(frozen=True)
class Target:
    op: str  # ">=" or "<="
    value: float
    percent: bool = False  # shown as a percentage (MFU)

    def met(self, ratio: float) -> bool:
        return {">=": operator.ge, "<=": operator.le}[self.op](ratio, self.value)

    def text(self) -> str:
        sign = {">=": "≥", "<=": "≤"}[self.op]
        return f"{sign} {self.value:.0%}" if self.percent else f"{sign} {self.value:g}x"


@dataclass(frozen=True)
class Row:
    name: str
    precision: str
    baseline_name: str
    ours: Figure | None
    baseline: Figure | None
    target: Target | None
    note: str = ""  # why a figure is missing

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.baseline is None:
            return None
        return self.ours.value.median / self.baseline.value.median

    def as_dict(self) -> dict:
        ratio = self.ratio
        met = self.target.met(ratio) if self.target is not None and ratio is not None else None
        return {**asdict(self), "ratio": ratio, "met": met}


def number(x: float) -> str:
    """About three significant digits, thousands separated."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def figure_text(figure: Figure | None) -> str:
    if figure is None:
        return "–"
    scale, unit = UNIT_SCALE.get(figure.unit, (1, figure.unit))
    v = figure.value
    text = f"{number(v.median / scale)} {unit} [{number(v.low / scale)}–{number(v.high / scale)}]"
    if figure.rate is not None:
        text += f"; {number(figure.rate.median)} {figure.rate_unit}"
    return text


def ratio_text(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return "–"
    return f"{ratio:.1%}" if row.target is not None and row.target.percent else f"{ratio:.2f}x"


def met_text(row: Row) -> str:
    if row.target is None or row.ratio is None:
        return row.note or "–"
    return "met" if row.target.met(row.ratio) else "not met"


COLUMNS = (
    "row",
    "precision",
    "ours: median [min–max]",
    "baseline",
    "baseline: median [min–max]",
    "ratio",
    "target",
    "met",
)


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = (
            row.name,
            row.precision,
            figure_text(row.ours),
            row.baseline_name,
            figure_text(row.baseline),
            ratio_text(row),
            row.target.text() if row.target is not None else "–",
            met_text(row),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
