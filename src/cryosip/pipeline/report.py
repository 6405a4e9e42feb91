"""A self-contained HTML report of a run: its numbers in tables and its figures inline.

Figures are embedded as base64 PNG so ``report.html`` can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryosip.provenance import atomic_write_text

__all__ = ["write_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 10px;text-align:left;font-size:0.92em}
th{background:#f3f3f3} figure{display:inline-block;margin:0.5em}
figcaption{font-size:0.85em;color:#555} code{background:#f5f5f5;padding:1px 4px}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, Mapping) and value and all(
            isinstance(v, Mapping) and {"value", "lo", "hi"} <= set(v) for v in value.values()):
        return "; ".join(f"{k} {v['value']:.3g} [{v['lo']:.3g}, {v['hi']:.3g}]"
                         for k, v in value.items())  # populations with their 90% interval
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return str(value)


def _table(rows: Mapping[str, Any]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<table>{body}</table>"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" width="440">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_report(path: str | Path, title: str, sections: Mapping[str, Mapping[str, Any]],
                 figures: Sequence[tuple[Path, str]], files: Sequence[str] = ()) -> Path:
    """Write ``report.html``: one table per section, then the figures, then the file list.

    ``sections`` maps a heading to ``{name: value}``; ``figures`` lists ``(png, caption)``.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, rows in sections.items():
        parts.append(f"<h2>{html.escape(heading)}</h2>{_table(rows)}")
    if figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(_figure(Path(p), c) for p, c in figures if Path(p).exists())
    if files:
        items = "".join(f"<li><code>{html.escape(f)}</code></li>" for f in files)
        parts.append(f"<h2>Files</h2><ul>{items}</ul>")
    parts.append("</body></html>\n")
    atomic_write_text(path, "".join(parts))
    return Path(path)
