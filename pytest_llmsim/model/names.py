"""Agent names as people see them (no pytest, no package imports): white space and invisible format characters
(a zero-width space, a BOM) at either end are not part of a name, so ``"Billing\\u200b"`` is ``Billing`` and
``"\\u200b"`` is empty, whether the agent said it or a scenario wrote it."""

from __future__ import annotations

import unicodedata


def _invisible(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) == "Cf"


def strip_invisible(text: str) -> str:
    """``text`` without white space or invisible format characters (category Cf) at either end."""
    start, end = 0, len(text)
    while start < end and _invisible(text[start]):
        start += 1
    while end > start and _invisible(text[end - 1]):
        end -= 1
    return text[start:end]
