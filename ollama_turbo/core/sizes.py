"""One parser for token counts written as ``8192,32k``: contexts, depths, needle lengths."""

from __future__ import annotations

from .errors import UsageError

MAX_TOKENS = 16 * 1024 * 1024  # no model trains on more; a bigger number is a typo


def parse_sizes(text: str, *, option: str, minimum: int = 1, maximum: int = MAX_TOKENS) -> list[int]:
    """``8k, 32768`` -> [8192, 32768]; ``k`` multiplies by 1024. Each must be in [``minimum``, ``maximum``]."""
    out = []
    for part in [p for p in text.replace(" ", "").split(",") if p]:
        mult = 1024 if part.lower().endswith("k") else 1
        try:
            n = int(part.rstrip("kK")) * mult
        except ValueError:
            raise UsageError(f"{option}: {part!r} is not a number (e.g. 8192,32k)") from None
        if n < minimum:
            raise UsageError(f"{option}: {part!r} must be at least {minimum}")
        if n > maximum:
            raise UsageError(f"{option}: {part!r} is more than {maximum:,} tokens", hint=f"give {option} at most "
                             f"{maximum // 1024}k")
        out.append(n)
    return out
