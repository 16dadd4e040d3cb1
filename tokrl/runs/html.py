"""Small pieces of the run report's HTML: number formats, escaped text, colours on a map."""

from __future__ import annotations

import html
import math


def fmt(x: float | None, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals; tiny numbers in scientific notation when digits >= 3
    (a KL of 2e-5 is news; a score of 2e-9 is 0.00)."""
    if x is None or not math.isfinite(x):
        return "—"
    if digits >= 3 and x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.1e}"
    if round(x, digits) == 0:
        x = 0.0                                   # never "-0.00"
    return f"{x:.{digits}f}"


def signed(x: float, digits: int = 3) -> str:
    return ("+" if x > 0 else "") + fmt(x, digits)


def colour(value: float | None, scale: float, cmap) -> tuple[str, str]:
    """(background, text) colours of ``value`` on a diverging map spanning ±scale."""
    t = 0.5                                                      # the neutral middle of the map
    if value is not None and scale > 0 and math.isfinite(value):
        t = 0.5 + 0.5 * max(-1.0, min(1.0, value / scale))
    r, g, b, _ = cmap(t)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}", "#0f172a" if luminance > 0.55 else "#ffffff"


def gradient(cmap) -> str:
    stops = ", ".join(colour(x, 1.0, cmap)[0] for x in (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0))
    return f"linear-gradient(90deg, {stops})"


def show(text: str) -> str:
    """Escaped token or completion text with invisible characters made visible."""
    text = text.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
    return html.escape(text) if text else '<span class="muted">∅</span>'


def score_of(record: dict) -> float:
    """A sample record's score (NaN when it has none)."""
    s = record.get("score")
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else math.nan
