"""Charts drawn on the server as SVG (no CDN, no script: the CSP allows neither inline script nor
inline styles, so the SVG uses presentation attributes and classes from static/reports.css).

Pure functions: data in, ``markupsafe.Markup`` out; every text is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 240
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP, MARGIN_RIGHT = 48, 48, 28, 12
COLOURS = ("#1f5fae", "#a4462b", "#2e7d32", "#8a6d00", "#6a3d9a")


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def bar_chart(chart_id: str, title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]],
              *, y_max: float | None = None, fmt: Callable[[float], str] = _number) -> Markup:
    """Grouped vertical bars: one group per label, one bar per series, a legend, a y scale."""
    top = y_max if y_max is not None else max([v for _, values in series for v in values] + [1.0])
    plot_w, plot_h = WIDTH - MARGIN_LEFT - MARGIN_RIGHT, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    groups = max(1, len(labels))
    group_w = plot_w / groups
    bar_w = max(1.0, group_w * 0.8 / max(1, len(series)))
    parts = [f'<svg id="{escape(chart_id)}" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
             f'<title>{escape(title)}</title>',
             f'<text class="chart-title" x="{MARGIN_LEFT}" y="16">{escape(title)}</text>']
    for step in range(5):
        value = top * step / 4
        y = MARGIN_TOP + plot_h - plot_h * step / 4
        parts.append(f'<line class="grid" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text class="tick" x="{MARGIN_LEFT - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{escape(fmt(value))}</text>')
    for g, label in enumerate(labels):
        x0 = MARGIN_LEFT + g * group_w + group_w * 0.1
        for s, (name, values) in enumerate(series):
            value = values[g] if g < len(values) else 0.0
            height = 0.0 if top <= 0 else plot_h * min(value, top) / top
            parts.append(f'<rect class="bar" data-series="{escape(name)}" data-label="{escape(label)}" '
                         f'data-value="{value:g}" x="{x0 + s * bar_w:.1f}" y="{MARGIN_TOP + plot_h - height:.1f}" '
                         f'width="{bar_w * 0.9:.1f}" height="{height:.1f}" fill="{COLOURS[s % len(COLOURS)]}">'
                         f'<title>{escape(name)}, {escape(label)}: {escape(fmt(value))}</title></rect>')
        if groups <= 16 or g % max(1, groups // 12) == 0:
            parts.append(f'<text class="tick" x="{MARGIN_LEFT + g * group_w + group_w / 2:.1f}" '
                         f'y="{HEIGHT - MARGIN_BOTTOM + 16}" text-anchor="middle">{escape(label)}</text>')
    for s, (name, _values) in enumerate(series):
        x = MARGIN_LEFT + s * 170
        parts.append(f'<rect x="{x}" y="{HEIGHT - 18}" width="10" height="10" fill="{COLOURS[s % len(COLOURS)]}"/>'
                     f'<text class="legend" x="{x + 14}" y="{HEIGHT - 9}">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # nosec B704  # every text in parts went through escape(); the rest are numbers and constants


def hbar_chart(chart_id: str, title: str, items: Sequence[tuple[str, float]], *, x_max: float | None = None,
               fmt: Callable[[float], str] = _number) -> Markup:
    """Horizontal bars, one per (label, value), top to bottom in the order given."""
    row_h, label_w = 22, 220
    height = MARGIN_TOP + row_h * max(1, len(items)) + 8
    top = x_max if x_max is not None else max([v for _, v in items] + [1.0])
    plot_w = WIDTH - label_w - MARGIN_RIGHT - 60
    parts = [f'<svg id="{escape(chart_id)}" class="chart" role="img" viewBox="0 0 {WIDTH} {height}" '
             f'width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f'<title>{escape(title)}</title>',
             f'<text class="chart-title" x="8" y="16">{escape(title)}</text>']
    if not items:
        parts.append(f'<text class="empty" x="8" y="{MARGIN_TOP + 14}">no data in this range</text>')
    for i, (label, value) in enumerate(items):
        y = MARGIN_TOP + i * row_h
        width = 0.0 if top <= 0 else plot_w * min(value, top) / top
        shown = label if len(label) <= 32 else label[:31] + "…"
        parts.append(f'<text class="tick" x="{label_w - 6}" y="{y + 14}" text-anchor="end">{escape(shown)}</text>'
                     f'<rect class="bar" data-label="{escape(label)}" data-value="{value:g}" x="{label_w}" y="{y + 3}" '
                     f'width="{width:.1f}" height="{row_h - 6}" fill="{COLOURS[0]}"><title>{escape(label)}: '
                     f'{escape(fmt(value))}</title></rect>'
                     f'<text class="value" x="{label_w + width + 4:.1f}" y="{y + 14}">{escape(fmt(value))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # nosec B704  # every text in parts went through escape(); the rest are numbers and constants
