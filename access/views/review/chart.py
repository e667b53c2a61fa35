"""The decisions-per-week chart, and decision times in words."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


def human_hours(hours: float | None) -> str:
    """12.5 -> '12.5 hours'; 60 -> '2.5 days'; None -> '—' (no decisions yet)."""
    if hours is None:
        return "—"
    if hours < 1:
        return f"{round(hours * 60)} minutes"
    if hours < 48:
        return f"{hours:.1f} hours"
    return f"{hours / 24:.1f} days"


# --- The decisions-per-week chart -------------------------------------------------------------


@dataclass(frozen=True)
class ChartBar:
    week: date
    count: int
    x: float
    y: float
    width: float
    height: float
    label_x: float
    count_y: float


@dataclass(frozen=True)
class WeeklyChart:
    bars: list[ChartBar]
    width: int
    height: int
    baseline: float
    maximum: int
    total: int


def weekly_chart(weekly: list[tuple[date, int]], *, width: int = 640, height: int = 180) -> WeeklyChart:
    """Bar geometry for an inline SVG: computed here so the template only places rectangles."""
    top, bottom = 16.0, 28.0  # room for the count above each bar and the week label below
    plot_height = height - top - bottom
    maximum = max((count for _, count in weekly), default=0)
    slot = width / max(len(weekly), 1)
    bar_width = slot * 0.7
    bars = []
    for index, (week, count) in enumerate(weekly):
        bar_height = plot_height * count / maximum if maximum else 0.0
        x = index * slot + (slot - bar_width) / 2
        bars.append(
            ChartBar(
                week=week,
                count=count,
                x=round(x, 1),
                y=round(top + plot_height - bar_height, 1),
                width=round(bar_width, 1),
                height=round(bar_height, 1),
                label_x=round(x + bar_width / 2, 1),
                count_y=round(top + plot_height - bar_height - 4, 1),
            )
        )
    return WeeklyChart(
        bars=bars,
        width=width,
        height=height,
        baseline=top + plot_height,
        maximum=maximum,
        total=sum(count for _, count in weekly),
    )
