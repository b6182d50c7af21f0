"""Metadata formatting for materializations: Markdown tables and embedded plots."""

from ml.plots import bar_chart_png, png_markdown


def bar_chart_markdown(labels, values, *, title: str, xlabel: str, ylabel: str) -> str:
    return png_markdown(bar_chart_png(labels, values, title=title, xlabel=xlabel, ylabel=ylabel), title)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "_(none)_"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def rounded_rows(rows: list[dict], digits: int = 3, drop: tuple[str, ...] = ()) -> list[dict]:
    """Rows for a metadata table: floats rounded, ``drop`` columns left out."""
    return [{k: (round(v, digits) if isinstance(v, float) else v) for k, v in r.items() if k not in drop}
            for r in rows]
