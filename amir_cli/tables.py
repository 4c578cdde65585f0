"""Terminal tables that fit the terminal: no vertical rules, one space between columns, and when the
table is still too wide, whole columns left out in a given order instead of cut cells; and the
progress bar of the commands."""

from __future__ import annotations

from collections.abc import Sequence


def fitted_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, width: int, drop: Sequence[str] = (),
                 right: Sequence[str] = (), title: str | None = None):
    """(rich Table, the names of the columns left out): ``rows`` under ``columns``, leaving out the
    columns of ``drop``, in that order, until the table is at most ``width`` characters wide."""
    from rich.console import Console

    measure = Console(width=10_000)
    shown = list(columns)
    left_out: list[str] = []
    for name in (None, *drop):
        if name is not None:
            shown.remove(name)
            left_out.append(name)
        table = _table(columns, shown, rows, right, title)
        if measure.measure(table).maximum <= width:
            break
    return table, left_out


def _table(columns, shown, rows, right, title):
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0))
    for name in shown:
        table.add_column(name, justify="right" if name in right else "left", no_wrap=True)
    index = [list(columns).index(name) for name in shown]
    for row in rows:
        table.add_row(*(row[i] for i in index))
    return table


def progress_bar(console, label: str, *, bar_width: int = 40, fields: Sequence[str] = (), transient: bool = True,
                 disable: bool = False):
    """A rich progress bar on ``console``: ``label`` (rich markup), the bar, done/total, the task
    ``fields`` named, the time elapsed and the time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn(label),
        BarColumn(bar_width=bar_width),
        MofNCompleteColumn(),
        *(TextColumn(f"{{task.fields[{name}]}}") for name in fields),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )
