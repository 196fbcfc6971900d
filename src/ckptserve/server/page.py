"""The live status page at `/`: plain HTML, no scripts or external assets, refreshed every 2 s."""

from __future__ import annotations

import html
import time
from typing import Any

from .state import Runtime

__all__ = ["render_page"]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.ok{color:#080}.bad{color:#b00}.warn{color:#a60}code{font-size:13px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _when(at: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if at else "-"


def render_page(runtime: Runtime) -> str:
    """The whole page for the current state of every model."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta http-equiv='refresh' content='2'><title>ckptserve</title>",
        f"<style>{_STYLE}</style></head><body><h1>ckptserve</h1>",
    ]
    reasons = runtime.not_ready()
    state = "<span class='ok'>ready</span>" if not reasons else "<span class='bad'>not ready</span>"
    parts.append(f"<p>{state} &middot; {len(runtime.models)} model(s) &middot; prefix "
                 f"<code>{_e(runtime.settings.prefix)}</code> &middot; swap "
                 f"<code>{_e(runtime.settings.registry.swap)}</code></p>")  # fmt: skip
    for name, handle in runtime.models.items():
        status = handle.registry.status()
        version = status["version"]
        age, lag = handle.staleness()
        default = " (default)" if name == runtime.default else ""
        parts.append(f"<h2>{_e(name)}{default}</h2><table>")
        rows = [
            ("watching", f"<code>{_e(status['model_path'])}</code> ({_e(status['source'])})"),
            ("live", f"<code>{_e(version['checkpoint'])}</code> sha256 <code>{_e(version['sha256'][:12])}</code> "
             f"({_e(version['format'])}, loaded {_when(version['loaded_at'])} in "
             f"{version['load_seconds'] * 1000:.1f} ms)" if version else "<span class='bad'>none</span>"),
            ("loads", _e(status["load_count"])),
            ("age", _ago(age)),
            ("lag behind newest file",
             f"<span class='{'warn' if lag else 'ok'}'>{_ago(lag)}</span>" if lag is not None else "-"),
            ("pinned", f"<code>{_e(status['pinned'])}</code>" if status["pinned"] else "no"),
        ]  # fmt: skip
        if status["file_missing"]:
            rows.append(("file", "<span class='bad'>missing</span>"))
        error = status["last_error"]
        if error:
            rows.append(("last error", f"<span class='bad'>{_e(error['result'])}</span> "
                         f"{_e(error['checkpoint'])}: {_e(error['reason'])} at {_when(error['at'])}"))  # fmt: skip
        parts.extend(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
        parts.append("</table><table><tr><th>time</th><th>result</th><th>checkpoint</th>"
                     "<th>sha256</th><th>ms</th><th>reason</th></tr>")  # fmt: skip
        for attempt in reversed(status["history"]):
            css = "ok" if attempt["result"] in ("ok", "unchanged") else "bad"
            parts.append(
                f"<tr><td>{_when(attempt['at'])}</td><td class='{css}'>{_e(attempt['result'])}</td>"
                f"<td>{_e(attempt['checkpoint'])}</td><td><code>{_e((attempt['sha256'] or '')[:12])}</code></td>"
                f"<td>{attempt['duration'] * 1000:.1f}</td><td>{_e(attempt['reason'])}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<p><a href='/docs'>API docs</a> &middot; <a href='/metrics'>metrics</a> &middot; "
                 "<a href='/readyz'>readyz</a></p></body></html>")  # fmt: skip
    return "".join(parts)
