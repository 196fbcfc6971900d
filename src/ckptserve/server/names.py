"""Names that whoever writes the model directory chooses (file names, manifest fields), made
safe for a response: a header value, JSON, HTML or a metric label. Any byte is possible in a file
name on Linux, including a newline and bytes that are not UTF-8 (which Python holds as lone
surrogates, and which no UTF-8 encoder accepts)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

__all__ = ["VERSION_HEADER", "printable", "text_safe", "version_header"]

VERSION_HEADER = b"x-model-version"

# Visible ASCII but the percent sign: what a header value may hold as it is.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if c != ord("%"))


def version_header(checkpoint: str, sha256: str) -> bytes:
    """The `X-Model-Version` value, `<checkpoint>@<sha256[:12]>`, with every byte of the name
    outside visible ASCII (a control character, a space, a non-ASCII letter, a byte that is not
    UTF-8) and `%` itself percent-encoded: percent-decoded, it is the tag.

    Example:
        >>> version_header("actor_a\\nX.pt", "ab" * 32)
        b'actor_a%0AX.pt@abababababab'
    """
    name = quote(checkpoint, safe=_SAFE, errors="surrogateescape")
    return f"{name}@{quote(sha256[:12], safe=_SAFE)}".encode("ascii")


def printable(text: str) -> str:
    """`text` as valid Unicode: each byte that was not UTF-8 becomes `\\xNN`; all else is kept."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def text_safe(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, tuples, strings, numbers) with every string made
    `printable`, so any encoder can write it."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {text_safe(k): text_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [text_safe(v) for v in value]
    return value
