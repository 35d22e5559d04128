"""The report's blocks (headings, paragraphs, notes, code, tables, figures) and their two renderings, Markdown and self-contained HTML, so the two documents always agree."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.report.cells import Table
from bench.report.figures import Figure


@dataclass
class Heading:
    level: int
    text: str
    anchor: str


@dataclass
class Para:
    text: str


@dataclass
class NoteBlock:
    text: str
    problem: bool = False  # something could not be drawn or is missing, not just a fact


@dataclass
class Code:
    text: str


Block = Heading | Para | NoteBlock | Code | Table | Figure


# ---- rendering ----------------------------------------------------------------------------------------


def _md_cell(text: Any, bold: bool) -> str:
    s = str(text).replace("|", "\\|").replace("\n", " ")
    return f"**{s}**" if bold and s not in ("", "-") else s


def md_table(t: Table) -> str:
    d = t.display
    if d.empty:
        return "_(empty)_"
    lines = ["| " + " | ".join(_md_cell(c, False) for c in d.columns) + " |",
             "|" + "|".join("---" for _ in d.columns) + "|"]
    for i in range(len(d)):
        lines.append("| " + " | ".join(_md_cell(d.iat[i, j], bool(t.bold.iat[i, j])) for j in range(d.shape[1])) + " |")
    return "\n".join(lines)


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, NoteBlock):
            out.append(f"> **Note:** {b.text}")
        elif isinstance(b, Code):
            out.append(f"```\n{b.text}\n```")
        elif isinstance(b, Table):
            out.append(f"**{b.title}** — {b.caption} ([csv](tables/{b.name}.csv))\n\n{md_table(b)}")
        elif isinstance(b, Figure):
            out.append(f"![{b.title}](figures/{b.png.name})\n\n*{b.title}.* {b.caption}")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then `code` and **bold** (the only inline markup the report's prose uses)."""
    s = html.escape(str(text))
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


# A cell that reads as a number: 0.812, 1,234, 0.81 ± 0.02, 0.81 [0.75, 0.86], 2.26 M (2.23 M), 12.5 s, +0.03
_NUMERIC = re.compile(r"-|[-+]?[\d.,]+( ?(± ?[\d.]+|\[[-+\d., ]+\]|\([^)]*\)|M|s|min|h|%))*")


def html_table(t: Table) -> str:
    d = t.display
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    numeric = [all(_NUMERIC.fullmatch(str(v)) for v in d.iloc[:, j]) for j in range(d.shape[1])]
    body = []
    for i in range(len(d)):
        cells = []
        for j in range(d.shape[1]):
            value = _inline(d.iat[i, j])
            cls = ' class="num"' if numeric[j] else ""
            cells.append(f"<td{cls}>{f'<strong>{value}</strong>' if t.bold.iat[i, j] else value}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<figure class="table" id="table-{html.escape(t.name)}"><figcaption><strong>{html.escape(t.title)}'
            f'</strong> — {_inline(t.caption)} <span class="csv">tables/{html.escape(t.name)}.csv</span>'
            f'</figcaption><div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            f"</tbody></table></div></figure>")


CSS = """
:root { --fg:#1d2329; --muted:#5b6670; --line:#d8dee4; --accent:#0b5cad; --note:#fff6dd; --noteline:#e0b23a; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
       margin: 0; background: #f6f8fa; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; min-height: 100vh; }
h1 { font-size: 28px; margin: 8px 0 4px; } h2 { font-size: 22px; margin-top: 40px; padding-bottom: 4px;
border-bottom: 2px solid var(--line); } h3 { font-size: 17px; margin-top: 28px; color: #26313b; }
nav.toc { background: #f0f4f8; border: 1px solid var(--line); border-radius: 6px; padding: 8px 16px; margin: 16px 0; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 18px; white-space: nowrap; }
figure { margin: 16px 0; } figcaption { color: var(--muted); font-size: 13px; margin-bottom: 6px; }
figure.plot figcaption { margin-top: 4px; }
figure.plot img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f6; font-weight: 600; } td.num { text-align: right; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
td strong { color: #003e80; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f0f2f4; padding: 1px 4px;
       border-radius: 3px; white-space: nowrap; }
.note { background: var(--note); border-left: 4px solid var(--noteline); padding: 6px 12px; margin: 10px 0;
        font-size: 14px; }
.csv { font-size: 11px; color: #8a949c; }
#js-errors:empty { display: none; }
#js-errors { background: #fde8e8; border: 1px solid #e0a0a0; padding: 8px; }
"""

JS_HOOK = """
(function () {
  var box = null;
  function record(msg) {
    box = box || document.getElementById('js-errors');
    if (box) { box.textContent += msg + '\\n'; } else { (window.__benchErrors = window.__benchErrors || []).push(msg); }
  }
  window.addEventListener('error', function (e) { record('error: ' + e.message); });
  var original = console.error;
  console.error = function () { record('console.error: ' + Array.prototype.join.call(arguments, ' '));
    if (original) { original.apply(console, arguments); } };
  document.addEventListener('DOMContentLoaded', function () {
    (window.__benchErrors || []).forEach(record); window.__benchErrors = [];
    document.body.setAttribute('data-rendered', 'yes');
  });
})();
"""


def to_html(blocks: Sequence[Block]) -> str:
    parts: list[str] = []
    toc = [b for b in blocks if isinstance(b, Heading) and b.level == 2]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f'<h{b.level} id="{html.escape(b.anchor)}">{html.escape(b.text)}</h{b.level}>')
            if b.level == 1 and toc:
                parts.append('<nav class="toc">' + "".join(
                    f'<a href="#{html.escape(h.anchor)}">{html.escape(h.text)}</a>' for h in toc) + "</nav>")
        elif isinstance(b, Para):
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, NoteBlock):
            parts.append(f'<div class="note"><strong>Note:</strong> {_inline(b.text)}</div>')
        elif isinstance(b, Code):
            parts.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif isinstance(b, Table):
            parts.append(html_table(b))
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png.read_bytes()).decode("ascii")
            parts.append(f'<figure class="plot" id="figure-{html.escape(b.name)}"><img alt="{html.escape(b.title)}" '
                         f'src="data:image/png;base64,{data}"><figcaption><strong>{html.escape(b.title)}.</strong> '
                         f"{_inline(b.caption)}</figcaption></figure>")
    title = "bench report"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{CSS}</style><script>{JS_HOOK}</script></head>"
            f'<body><main><pre id="js-errors"></pre>\n' + "\n".join(parts) + "\n</main></body></html>\n")
