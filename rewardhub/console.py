"""The one rich console everything prints through: progress bars, metric lines, stage banners, summaries.

When stdout is not a terminal (a log file, CI, ``| tee``), rich would wrap every line at 80 columns; here a
line stays one line, so a metric row can be read, grepped and compared. Numbers are shown by :func:`number`.
"""

from __future__ import annotations

import math
import sys

from rich.console import Console

console = Console(soft_wrap=not sys.stdout.isatty())


def number(value: object, digits: int = 4) -> str:
    """A metric for a person: integers (and integral floats: counts, steps) without a decimal point, other
    floats to ``digits`` significant figures; anything else as ``str``.

    Example:
        >>> number(500.0), number(0.12345), number(3), number(float("nan")), number("x")
        ('500', '0.1235', '3', 'nan', 'x')
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.{digits}g}"
