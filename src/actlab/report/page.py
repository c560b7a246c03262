"""Writing a report page: the HTML and its figures beside it, each atomically."""

from __future__ import annotations

from pathlib import Path

from ..runs.atomic import write_bytes_atomic, write_text_atomic
from ..storage import RunPath


def write_page(out: RunPath, page: str, figures: dict[str, bytes]) -> Path:
    """A report page and its figures (figures/*.png beside it), each written atomically."""
    figures_dir = out.parent / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        write_bytes_atomic(figures_dir / name, png)
    write_text_atomic(out, page)
    return out
