"""Rich progress bars that show throughput (positions/s) and ETA, on stderr."""

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def positions_progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
        MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, disable=disable, transient=False)


def rate_text(done: float, elapsed: float | None, unit: str = "pos") -> str:
    if not elapsed:
        return f"- {unit}/s"
    return f"{done / elapsed:,.0f} {unit}/s"
