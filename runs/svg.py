"""Small server-side SVG charts for the admin dashboard: no JavaScript, every text escaped.

Each chart is a ``SafeString`` built with ``format_html`` (which escapes its arguments), so
a workflow or provider name can never become markup.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]


def stacked_bars(chart_id: str, title: str, categories: Sequence[str], series: Mapping[str, Sequence[float]],
                 colors: dict[str, str] | None = None, fmt: Callable[[float], str] = lambda v: f"{v:g}",
                 width: int = 720, height: int = 220, label_every: int = 1) -> SafeString:
    """Stacked vertical bars: one bar per category, one coloured segment per series, a legend.

    Every segment is a ``rect.bar`` carrying ``data-series``, ``data-category`` and
    ``data-value``, and a ``<title>`` tooltip.
    """
    colors = dict(colors or {})
    for i, name in enumerate(series):
        colors.setdefault(name, PALETTE[i % len(PALETTE)])
    left, right, top, bottom = 48, 8, 10, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(categories))]
    peak = max(totals, default=0) or 1.0
    slot = plot_w / max(len(categories), 1)
    bar_w = max(slot * 0.8, 1.0)
    parts: list[SafeString] = []
    for i, category in enumerate(categories):
        y = float(top + plot_h)
        x = left + i * slot + (slot - bar_w) / 2
        for name, values in series.items():
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / peak
            y -= h
            parts.append(format_html(
                '<rect class="bar" x="{}" y="{}" width="{}" height="{}" fill="{}" '
                'data-series="{}" data-category="{}" data-value="{}"><title>{} {}: {}</title></rect>',
                _n(x), _n(y), _n(bar_w), _n(h), colors[name], name, category, fmt(value), category, name,
                fmt(value)))
        if i % label_every == 0:
            parts.append(format_html(
                '<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>',
                _n(left + i * slot + slot / 2), top + plot_h + 14, category))
    axis = format_html(
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#888"/>'
        '<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>'
        '<text x="{}" y="{}" font-size="10" text-anchor="end">0</text>',
        left, top + plot_h, left + plot_w, top + plot_h, left - 4, top + 10, fmt(peak), left - 4, top + plot_h)
    legend = format_html_join("", '<g class="legend"><rect x="{}" y="{}" width="10" height="10" fill="{}"/>'
                              '<text x="{}" y="{}" font-size="11">{}</text></g>',
                              ((left + j * 130, height - 16, colors[name], left + j * 130 + 14, height - 7, name)
                               for j, name in enumerate(series)))
    body = mark_safe("".join(parts))  # each part built by format_html
    return format_html(
        '<svg id="{}" class="stevora-chart" xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" '
        'viewBox="0 0 {} {}" role="img" aria-label="{}"><title>{}</title>{}{}{}</svg>',
        chart_id, width, height, width, height, title, title, axis, body, legend)


def _n(value: float) -> str:
    """A coordinate (format_html escapes its arguments into strings: format numbers first)."""
    return f"{value:.1f}"
