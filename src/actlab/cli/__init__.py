"""The `actlab` command line: a thin shell over the Python API. Each
command reads its options (most generated from the API's config
dataclasses), calls one API function and prints what it returns."""

import sys

from ..errors import ActlabError
from . import bench, latents, saes, traits
from .circuit import circuit_command
from .common import err, error_line, with_optional_values
from .contrast import contrast_command
from .extract import app
from .generate import generate_command
from .patch import patch_command

app.command("circuit")(circuit_command)
app.command("contrast")(contrast_command)
app.command("generate")(generate_command)
app.command("patch")(patch_command)
app.add_typer(latents.app, name="latents")
app.add_typer(saes.app, name="sae")
app.add_typer(traits.app, name="traits")
bench.add_bench(app)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        app(args=with_optional_values(sys.argv[1:]), prog_name="actlab")  # typer reports usage errors (exit 2)
    except ActlabError as exc:
        err.print(f"[red]error:[/red] {error_line(exc)}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; finished shards are kept, rerun the same command to resume")
        sys.exit(130)
