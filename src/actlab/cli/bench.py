"""`actlab bench ...`: the benchmarks of the actlab repository (benchmarks/,
not part of the wheel). From a checkout (an editable install, or the
current directory or one above it holding the repository), the commands are
the repository's `benchmarks.cli.app`; elsewhere `actlab bench` says in one
line what to do."""

import importlib
import sys
from pathlib import Path

import typer

GET_THE_REPOSITORY = ("actlab bench runs the benchmarks of the actlab repository, which this installation lacks: "
                      "clone the repository, `pip install -e '.[bench]'` there and run actlab bench from it")


def repository() -> Path | None:
    """The actlab checkout whose benchmarks/ to run: the one this package is
    installed from (editable), else the current directory or one above it."""
    installed_from = Path(__file__).resolve().parents[3]  # src/actlab/cli/bench.py -> the checkout, if editable
    for place in (installed_from, Path.cwd(), *Path.cwd().parents):
        if (place / "benchmarks" / "cli.py").is_file() and (place / "src" / "actlab").is_dir():
            return place
    return None


def benchmarks_module(name: str):
    """benchmarks.<name> of the repository, or None where there is none."""
    root = repository()
    if root is None:
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"benchmarks.{name}")


def add_bench(app: typer.Typer) -> None:
    """`actlab bench`: the repository's benchmark commands, or one command
    that answers anything with GET_THE_REPOSITORY and exit status 2."""
    cli = benchmarks_module("cli")
    if cli is not None:
        app.add_typer(cli.app, name="bench")
    else:
        app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                               "help_option_names": []})(missing_benchmarks)


def missing_benchmarks(ctx: typer.Context) -> None:
    """Benchmarks: the actlab repository's benchmarks/ (not in this installation)."""
    typer.echo(f"error: {GET_THE_REPOSITORY}", err=True)
    raise typer.Exit(2)
