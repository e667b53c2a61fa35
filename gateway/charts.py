"""The usage chart: tokens per day, one stacked bar per day with a segment per model. The geometry is
computed here, so the template only places rectangles (an inline SVG: no script, no CDN)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from gateway.selectors import DayUsage

# Colour-blind-safe (Okabe-Ito), darkest first.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442")


@dataclass(frozen=True)
class Segment:
    model: str
    tokens: int
    requests: int
    colour: str
    y: float
    height: float


@dataclass(frozen=True)
class DayBar:
    day: date
    tokens: int
    requests: int
    x: float
    width: float
    label_x: float
    segments: list[Segment]


@dataclass(frozen=True)
class UsageChart:
    bars: list[DayBar]
    legend: list[tuple[str, str]]  # (model, colour)
    width: int
    height: int
    baseline: float
    maximum: int
    total_tokens: int
    total_requests: int
    label_every: int


def usage_chart(rows: list[DayUsage], *, first_day: date, days: int, width: int = 720, height: int = 220) -> UsageChart:
    """`rows` (from selectors.user_usage_by_day) laid out over `days` days starting at `first_day`;
    days without requests get an empty slot."""
    top, bottom = 12.0, 26.0
    plot = height - top - bottom
    models = sorted({row.model for row in rows})
    colours = {model: PALETTE[index % len(PALETTE)] for index, model in enumerate(models)}
    per_day: dict[date, list[DayUsage]] = {}
    for row in rows:
        per_day.setdefault(row.day, []).append(row)
    totals = {day: sum(row.total_tokens for row in items) for day, items in per_day.items()}
    maximum = max(totals.values(), default=0)
    slot = width / max(days, 1)
    bar_width = slot * 0.72
    bars = []
    for index in range(days):
        day = first_day + timedelta(days=index)
        x = index * slot + (slot - bar_width) / 2
        y = top + plot
        segments = []
        for row in sorted(per_day.get(day, []), key=lambda r: r.model):
            segment_height = plot * row.total_tokens / maximum if maximum else 0.0
            y -= segment_height
            segments.append(
                Segment(
                    model=row.model,
                    tokens=row.total_tokens,
                    requests=row.requests,
                    colour=colours[row.model],
                    y=round(y, 1),
                    height=round(segment_height, 1),
                )
            )
        bars.append(
            DayBar(
                day=day,
                tokens=totals.get(day, 0),
                requests=sum(row.requests for row in per_day.get(day, [])),
                x=round(x, 1),
                width=round(bar_width, 1),
                label_x=round(x + bar_width / 2, 1),
                segments=segments,
            )
        )
    return UsageChart(
        bars=bars,
        legend=[(model, colours[model]) for model in models],
        width=width,
        height=height,
        baseline=top + plot,
        maximum=maximum,
        total_tokens=sum(totals.values()),
        total_requests=sum(row.requests for row in rows),
        label_every=max(1, days // 10),
    )


# --- Line charts (e.g. a training job's loss and learning rate) --------------------------------


@dataclass(frozen=True)
class Mark:
    """A vertical line at one x (e.g. a resume or a rollback), with its label."""

    x: float
    label: str


@dataclass(frozen=True)
class LineChart:
    points: str  # the SVG polyline's "x,y x,y ..."
    colour: str
    width: int
    height: int
    baseline: float
    top: float
    x_min: float
    x_max: float
    y_min: float
    y_max: float
    count: int
    marks: list[Mark]


def line_chart(
    values: list[tuple[float, float]],
    *,
    marks: list[tuple[float, str]] | None = None,
    colour: str = PALETTE[0],
    width: int = 720,
    height: int = 200,
    max_points: int = 600,
) -> LineChart:
    """`values` (x, y) laid out as one polyline (every k-th point past `max_points`, the last kept); the
    template only draws it (an inline SVG: no script, no CDN)."""
    top, bottom = 10.0, 20.0
    plot = height - top - bottom
    if len(values) > max_points:
        stride = -(-len(values) // max_points)
        values = values[::stride] + ([values[-1]] if (len(values) - 1) % stride else [])
    xs = [x for x, _ in values]
    ys = [y for _, y in values]
    x_min, x_max = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y_min, y_max = (min(ys), max(ys)) if ys else (0.0, 1.0)
    x_span = (x_max - x_min) or 1.0
    y_span = (y_max - y_min) or (abs(y_max) or 1.0)

    def sx(x: float) -> float:
        return round((x - x_min) / x_span * width, 1)

    def sy(y: float) -> float:
        return round(top + plot - (y - y_min) / y_span * plot, 1)

    return LineChart(
        points=" ".join(f"{sx(x)},{sy(y)}" for x, y in values),
        colour=colour,
        width=width,
        height=height,
        baseline=top + plot,
        top=top,
        x_min=x_min,
        x_max=x_max,
        y_min=y_min,
        y_max=y_max,
        count=len(values),
        marks=[Mark(x=sx(x), label=label) for x, label in (marks or []) if x_min <= x <= x_max],
    )
