"""How a comparison is shown: the terminal table, the markdown report and its plot.

matplotlib is optional (the `dev` extra has it): it is imported only to draw the plot, and a
report written without it says so instead of showing the figure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from deepseek.pricing import format_usd

from .compare import Row, Summary

HEADERS = ("#", "prompt", "similarity", "latency A/B (s)", "tokens A/B", "cost A/B ($)")


def _short(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _pair(row: Row, cell) -> str:
    return " / ".join("error" if a.error else cell(a) for a in row.answers.values())


def table_rows(rows: list[Row]) -> list[tuple[str, ...]]:
    out = []
    for row in rows:
        sim = row.similarity
        out.append((str(row.prompt.index), _short(row.prompt.label), "-" if sim is None else f"{sim:.3f}",
                    _pair(row, lambda a: f"{a.latency_s:.2f}"),
                    _pair(row, lambda a: str(a.charge.completion_tokens) if a.charge else "?"),
                    _pair(row, lambda a: format_usd(a.charge.cost_nano, 6) if a.charge else "?")))
    return out


def format_table(rows: list[Row]) -> str:
    """Aligned plain-text table (no dependency beyond the standard library)."""
    cells = [HEADERS, *table_rows(rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ratio(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary_lines(s: Summary) -> list[str]:
    a, b = s.models
    sim = "n/a" if s.mean_similarity is None else f"{s.mean_similarity:.3f}"
    lines = [f"- A = `{a}`, B = `{b}`",
             f"- mean similarity: {sim}",
             f"- latency ratio B/A (mean): {_ratio(s.ratio('latency'))}",
             f"- cost ratio B/A (total): {_ratio(s.ratio('cost'))}"]
    for m in s.models:
        t, lat = s.totals[m], s.mean_latency_s[m]
        lines.append(f"- `{m}`: {t.requests} ok, {s.failures[m]} failed; mean latency "
                     f"{'n/a' if lat is None else f'{lat:.3f} s'}; prompt {t.prompt_tokens} tokens "
                     f"(cache hit {t.cache_hit_tokens}), completion {t.completion_tokens}; cost ${t.cost_usd}")
    return lines


def plot(rows: list[Row], s: Summary, path: Path) -> Optional[str]:
    """Per-prompt latency of both models and similarity; returns why not when it cannot draw."""
    try:
        import matplotlib
        matplotlib.use("Agg")            # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (`pip install matplotlib`)"
    xs = [r.prompt.index for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for offset, m in ((-0.2, s.models[0]), (0.2, s.models[1])):
        lat = [r.answers[m].latency_s if not r.answers[m].error else 0 for r in rows]
        top.bar([x + offset for x in xs], lat, width=0.4, label=m)
    top.set_ylabel("latency (s)")
    top.legend()
    bottom.bar(xs, [r.similarity or 0 for r in rows], width=0.6, color="gray")
    bottom.set_ylabel("similarity")
    bottom.set_ylim(0, 1)
    bottom.set_xlabel("prompt")
    bottom.set_xticks(xs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def write_report(rows: list[Row], s: Summary, path: Path, log_path: Optional[Path]) -> None:
    png = path.with_suffix(".png")
    skipped = plot(rows, s, png)
    md = [f"# {s.models[0]} vs {s.models[1]}", "", "## Summary", "", *summary_lines(s), ""]
    md += [f"![latency and similarity per prompt]({png.name})" if skipped is None
           else f"_Plot skipped: {skipped}._", ""]
    md += ["## Prompts", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table_rows(rows)]
    if log_path is not None:
        md += ["", f"Full responses: `{os.path.relpath(log_path, path.parent)}`."]
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
