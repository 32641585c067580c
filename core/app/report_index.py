"""The HTML index of ``temsims demo --case all``: one page linking every case's report.

:func:`write_index` writes ``index.html`` in the report directory: per case its title,
specimen, correlation ids, the figures its report printed, a link to its
``report.json`` and each PNG as a thumbnail linking to the full image. Links are
relative (the directory can be moved or served as it is); the page is static HTML with
inline CSS and no script, so any browser, headless or not, shows it as written.
"""

from __future__ import annotations

import datetime
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

INDEX_NAME = "index.html"


@dataclass
class IndexEntry:
    """One case's report, as the index shows it.

    Attributes
    ----------
    name, title, specimen : str
        The case (:class:`temsims.app.cases.Case`).
    correlation_ids : list of str
        Its experiments in the catalog.
    files : list of pathlib.Path
        What its report wrote (PNGs, ``report.json``).
    lines : list of str
        What its report printed (its figures).
    out : pathlib.Path
        Its report directory.
    error : str, optional
        Why the case failed (then it has no files).
    """

    name: str
    title: str
    specimen: str
    correlation_ids: list[str]
    files: list[Path]
    lines: list[str] = field(default_factory=list)
    out: Path | None = None
    error: str | None = None


def _href(path: Path, base: Path) -> str:
    """``path`` relative to ``base``, as a URL path (forward slashes, each part quoted)."""
    from urllib.parse import quote

    rel = os.path.relpath(Path(path).resolve(), Path(base).resolve())
    return "/".join(quote(part) for part in Path(rel).parts)


def write_index(out: Path, entries: list[IndexEntry], *, catalog: str,
                wall_s: float | None = None) -> Path:
    """Write ``out/index.html`` linking every entry's files; returns its path.

    Parameters
    ----------
    out : pathlib.Path
        The report directory (the cases' own directories are below it).
    entries : list of IndexEntry
        The cases, in the order they ran.
    catalog : str
        Where the runs are (shown, not linked: a directory or a server's URI).
    wall_s : float, optional
        How long all the cases took.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>temsims demo: every case study</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:80em}"
        "h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}"
        "figure{display:inline-block;margin:.4em;vertical-align:top}"
        "figure img{max-width:36em;border:1px solid #ddd}"
        "figcaption{font-size:.85em}pre{background:#f6f6f6;padding:.6em;"
        "white-space:pre-wrap}code{font-size:.9em}</style>",
        "</head>", "<body>", "<h1>temsims demo: every case study</h1>",
        f"<p>Catalog <code>{esc(catalog)}</code>; written {esc(when)}"
        + (f" after {wall_s:.0f} s" if wall_s is not None else "") + ".</p>",
        '<ul id="cases">']
    parts += [f'<li><a href="#{esc(e.name)}">{esc(e.name)}</a>: {esc(e.title)}</li>'
              for e in entries]
    parts.append("</ul>")
    for e in entries:
        parts.append(f'<section id="{esc(e.name)}" class="case">')
        parts.append(f"<h2>{esc(e.name)}</h2>")
        parts.append(f"<p>{esc(e.title)}<br>specimen <code>{esc(e.specimen)}</code>; "
                     "correlation id " + ", ".join(f"<code>{esc(c)}</code>"
                                                   for c in e.correlation_ids) + "</p>")
        if e.error:
            parts.append(f'<p class="error"><strong>failed</strong>: {esc(e.error)}</p>')
        jsons = [f for f in e.files if Path(f).suffix == ".json"]
        for f in jsons:
            parts.append(f'<p>figures: <a class="figures" href="{esc(_href(f, out))}">'
                         f"{esc(Path(f).name)}</a></p>")
        if e.lines:
            parts.append("<pre>" + esc("\n".join(e.lines)) + "</pre>")
        for f in e.files:
            if Path(f).suffix.lower() != ".png":
                continue
            href = esc(_href(f, out))
            parts.append(f'<figure><a class="png" href="{href}"><img src="{href}" '
                         f'alt="{esc(Path(f).stem)}"></a><figcaption>{esc(Path(f).name)}'
                         "</figcaption></figure>")
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    path = out / INDEX_NAME
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


__all__ = ["INDEX_NAME", "IndexEntry", "write_index"]
