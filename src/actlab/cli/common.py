"""What every command shares: options generated from the API's config
dataclasses, the progress bar, tables, and the error handling."""

import dataclasses
import functools
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..activations import DEFAULT_SHARD_SIZE
from ..default_model import DEFAULT_MODEL
from ..errors import ActlabError
from ..generation import EditConfig, FileCap, FileVector, LatentClamp
from ..generation.run import GENERATION_SHARD_SIZE
from ..inputs import FieldNames, ParquetRecords, Records, read_records
from ..models import AUTO_DTYPE, DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_MATMUL
from ..runs import RunControl

out = Console()
err = Console(stderr=True)
FLAGS: dict[str, str] = {}  # Python parameter -> its flag, for error messages


@dataclasses.dataclass
class ModelOptions:
    model: str = dataclasses.field(default=DEFAULT_MODEL, metadata={
        "help": "Hub id, local folder, .gguf file or alias.", "flag": "--model", "short": "-m"})
    device: str = dataclasses.field(default=DEFAULT_DEVICE, metadata={
        "help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps."})
    dtype: str = dataclasses.field(default=DEFAULT_DTYPE, metadata={"help": "float32, bfloat16, float16; 8bit/4bit on "
                                                                        "CUDA."})
    matmul: str = dataclasses.field(default=DEFAULT_MATMUL, metadata={
        "help": "CPU float32 linear layers: auto (per shape, whichever of torch and onednn this machine measured "
                "faster, recorded in $ACTLAB_HOME/machine.json), torch, onednn. A run records its paths; resumed, "
                "it keeps them."})

    def load(self):
        from ..models import load_model

        return load_model(self.model, device=self.device, dtype=self.dtype, matmul=self.matmul)

    def for_runner(self, ray):
        """The loaded model, or on Ray only its spec (it is loaded where the weights are)."""
        from ..models import ModelSpec

        return ModelSpec(self.model, self.dtype, matmul=self.matmul) if ray.runner == "ray" else self.load()


@dataclasses.dataclass
class GenerationModelOptions(ModelOptions):
    """The model of a generating command: bfloat16 on CUDA unless told."""

    dtype: str = dataclasses.field(default=AUTO_DTYPE, metadata={
        "help": "auto (bfloat16 on CUDA, else float32), float32, bfloat16, float16; 8bit/4bit on CUDA."})


@dataclasses.dataclass
class RunOptions:
    """Where a run goes and what it reads: the shell's part of a run command."""

    input: Path = dataclasses.field(metadata={"help": ".txt, .jsonl, .json, .csv or .parquet (a path or an "
                                                      "s3:// / gs:// URI)", "short": "-i"})
    out: Path = dataclasses.field(metadata={"help": "Run directory (resumable): a path or an s3:// / gs:// URI.",
                                            "short": "-o"})
    shard_size: int | None = dataclasses.field(default=None, metadata={
        "help": f"Texts per Parquet shard (default: the run kind's, {DEFAULT_SHARD_SIZE} for extract and features, "
                f"{GENERATION_SHARD_SIZE} for generate)."})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "Replace an existing run in --out."})
    skip_empty: bool = dataclasses.field(default=False, metadata={"help": "Skip empty texts instead of failing."})

    def control(self, progress, ray) -> RunControl:
        """How the run goes (the run functions' `control`) by these options."""
        return RunControl(shard_size=self.shard_size, overwrite=self.overwrite, progress=progress,
                          runner=ray.runner, ray=ray)

    def read(self, names: FieldNames, by_row_range: bool = False) -> Records | ParquetRecords:
        """The input; by_row_range: a Parquet input read by the workers, a row range per shard."""
        records = read_records(self.input, names, self.skip_empty, by_row_range)
        if records.n_skipped:
            err.print(f"skipped {records.n_skipped} empty text(s)")
        return records


@dataclasses.dataclass
class SAEOptions:
    """Which SAEs a command runs (--sae, repeatable)."""

    sae: list[str] | None = dataclasses.field(default=None, metadata={
        "help": "SAE folder (SAELens or sparsify) or release/sae_id; repeatable. Default: the SAEs actlab ships for "
                "the default model."})

    def load(self, device=None) -> dict | None:
        """{name: SAE}, or None for the model's default SAEs."""
        from ..saes import load_sae

        return {name: load_sae(name, device=device or "cpu") for name in self.sae} if self.sae else None


@dataclasses.dataclass
class PageOptions:
    """Where a report goes, and whether the model runs for it (token-level highlighting)."""

    out: Optional[Path] = dataclasses.field(default=None, metadata={
        "short": "-o", "help": "Where it goes (default: RUN/report.html for report, RUN/browser for latents report)."})
    use_model: bool = dataclasses.field(default=True, metadata={
        "flag": "--model-passes/--no-model", "help": "Run the model for token-level highlighting (and, for a features "
                                                     "report, SAE quality)."})


@dataclasses.dataclass
class EditOptions:
    """--ablate, --cap and --clamp as typed: strings parsed here into an EditConfig."""

    ablate: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "VECTORS.safetensors:LAYER: project the file's layer_LAYER vector (or its only tensor) out of block "
                "LAYER's output at every position (directional ablation); repeatable."})
    cap: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "VECTORS.safetensors:LAYER:LO:HI: hold the projection onto that vector within [LO, HI] at block "
                "LAYER's output (activation capping; inf and -inf allowed); repeatable."})
    clamp: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "SAE:LATENT:VALUE: clamp the SAE's latent to VALUE at its hook, keeping its error term (0: ablate); "
                "SAE is a folder or release/sae_id; repeatable."})

    def config(self) -> EditConfig:
        return EditConfig([self._vector(spec, "ablate", "VECTORS.safetensors:LAYER") for spec in self.ablate],
                          [self._cap(spec) for spec in self.cap], [self._clamp(spec) for spec in self.clamp])

    @staticmethod
    def _vector(spec: str, param: str, form: str) -> FileVector:
        path, _, layer = spec.rpartition(":")
        if not path or not layer.lstrip("-").isdigit():
            raise ActlabError(f"--{param} '{spec}' is not {form} (e.g. runs/t/vectors/mean_diff.safetensors:15)",
                              param=param)
        return FileVector(Path(path), int(layer))

    def _cap(self, spec: str) -> FileCap:
        head, _, hi = spec.rpartition(":")
        head, _, lo = head.rpartition(":")
        try:
            return FileCap(self._vector(head, "cap", "VECTORS.safetensors:LAYER:LO:HI"), float(lo), float(hi))
        except (ValueError, ActlabError):
            raise ActlabError(f"--cap '{spec}' is not VECTORS.safetensors:LAYER:LO:HI "
                              "(e.g. runs/t/vectors/mean_diff.safetensors:15:-inf:2.5)", param="cap") from None

    @staticmethod
    def _clamp(spec: str) -> LatentClamp:
        parts = spec.rsplit(":", 2)
        try:
            return LatentClamp(parts[0], int(parts[1]), float(parts[2]))
        except (ValueError, IndexError):
            raise ActlabError(f"--clamp '{spec}' is not SAE:LATENT:VALUE (e.g. runs/sae:1234:0 or "
                              "gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical:1234:8)",
                              param="clamp") from None


@dataclasses.dataclass
class RunModelOptions:
    """The model of a command on an existing run (by default the run's own, its weights checked)."""

    model: str | None = dataclasses.field(default=None, metadata={
        "short": "-m", "help": "Default: the run's model (its weights are checked against the run's)."})
    device: str = dataclasses.field(default=DEFAULT_DEVICE, metadata={"help": "auto, cpu, cuda, cuda:N, mps."})


def _option_type(annotation, comma: bool):
    """The type typer should parse for a dataclass field's annotation (a
    comma-separated list is read as one string)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = type(None) in typing.get_args(annotation)
    if comma:
        return Optional[str] if optional else str
    if origin in (typing.Union, types.UnionType):
        if list in [typing.get_origin(a) for a in args] and str not in args:
            inner = next(typing.get_args(a)[0] for a in args if typing.get_origin(a) is list)
            return Optional[List[inner if inner in (str, int, float, Path) else str]]
        inner = str if str in args else args[0]
        return Optional[inner] if optional else inner
    if origin is list:
        inner = typing.get_args(annotation)[0]
        return List[inner if inner in (str, int, float, Path) else str]
    return annotation


def _comma_kind(annotation) -> type:
    """The element type of a list[...] annotation (int, float or str)."""
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is list:
            return typing.get_args(arg)[0]
    return str


@dataclasses.dataclass(frozen=True)
class OptionField:
    """Where a command's option comes from: a config's field."""

    config: str  # the command's parameter that receives the config
    cls: type
    field: dataclasses.Field
    flag: str
    default: object  # the config's default for the field (dataclasses.MISSING: required)
    comma: type | None  # element type of a comma-separated list option


def _default(config, f: dataclasses.Field):
    if not isinstance(config, type):
        return getattr(config, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def with_options(exclude: tuple[str, ...] = (), required: tuple[str, ...] = (), flags: dict[str, str] | None = None,
                 **configs):
    """Add the fields of each config dataclass (configs: parameter name ->
    class, or an instance whose values are the defaults) to a typer command
    as options, and call the command with one config per name. Flags, help
    and defaults come from the dataclass, so the command line cannot drift
    from the Python API. exclude / required name fields ("field", or
    "config.field" for one config's); a field whose metadata has "comma"
    is one comma-separated option (--layers 7,15); `flags` gives a field
    ("config.field") this command's own flag where two configs name a
    field alike (traits run: --layers captured, --steer-layers steered). The command's
    `__actlab_options__` maps each generated option to its field (the CLI
    test walks every command with it)."""
    def decorate(command):
        signature = inspect.signature(command)
        kept = [p for p in signature.parameters.values() if p.name not in configs]
        added, owners = [], {}
        for config_name, config in configs.items():
            cls = config if isinstance(config, type) else type(config)
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if f.name in exclude or f"{config_name}.{f.name}" in exclude:
                    continue
                param = f.name if f.name not in owners else f"{config_name}_{f.name}"
                flag = (flags or {}).get(f"{config_name}.{f.name}") or \
                    f.metadata.get("flag", "--" + f.name.replace("_", "-"))
                FLAGS.setdefault(f.name, flag.split("/")[0])
                comma = _comma_kind(hints[f.name]) if f.metadata.get("comma") else None
                default = _default(config, f)
                owners[param] = OptionField(config_name, cls, f, flag, default, comma)
                kind = _option_type(hints[f.name], comma is not None)
                if "/" not in flag and bool in (hints[f.name], *typing.get_args(hints[f.name])):
                    flag = f"{flag}/--no-{flag[2:]}"
                names = [flag] + ([f.metadata["short"]] if "short" in f.metadata else [])
                shown = (",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) or None) \
                    if comma and default not in (None, dataclasses.MISSING) else default
                if default is dataclasses.MISSING or f.name in required or f"{config_name}.{f.name}" in required:
                    shown = ...
                option = typer.Option(shown, *names, help=f.metadata.get("help"),
                                      show_default=shown is not None and shown is not ...)
                added.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=option,
                                               annotation=kind))

        @functools.wraps(command)
        def wrapper(**values):
            built = {name: {} for name in configs}
            for param, owner in owners.items():
                value = values.pop(param)
                if value is not None and owner.comma is not None:
                    value = comma_list(value, owner.comma, owner.flag)
                if value is not None:
                    built[owner.config][owner.field.name] = value
            return command(**values, **{name: _build(configs[name], built[name]) for name in configs})

        wrapper.__signature__ = signature.replace(parameters=kept + added)
        wrapper.__annotations__ = {p.name: p.annotation for p in kept + added}  # typer reads these
        wrapper.__actlab_options__ = {**getattr(command, "__actlab_options__", {}), **owners}
        wrapper.__actlab_configs__ = {name: c if isinstance(c, type) else type(c) for name, c in configs.items()}
        wrapper.__actlab_excluded__ = tuple(exclude)
        return wrapper
    return decorate


def _build(config, values: dict):
    return config(**values) if isinstance(config, type) else dataclasses.replace(config, **values)


class Bar:
    """A rich progress bar (texts/s, tokens/s, shards, ETA) that runs report to."""

    def __init__(self, label: str):
        self.label = label
        self.tokens = 0
        self.shards = [0, 0]  # done, to do
        self.progress: Progress | None = None

    def start(self, total: int, shards: int) -> None:
        self.shards = [0, shards]
        if not sys.stderr.isatty():
            return
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[shards]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
                                 transient=False)
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=total, rate="", shards=f"shards 0/{shards}")

    def advance(self, n_texts: int, n_tokens: int) -> None:
        if self.progress is None:
            return
        self.tokens += n_tokens
        task = self.progress.tasks[0]
        elapsed = task.elapsed or 1e-9
        rate = f"{(task.completed + n_texts) / elapsed:.1f}/s {self.tokens / elapsed:.0f} tok/s"
        self.progress.update(self.task, advance=n_texts, rate=rate)

    def shard_done(self) -> None:
        self.shards[0] += 1
        if self.progress is not None:
            self.progress.update(self.task, shards=f"shards {self.shards[0]}/{self.shards[1]}")

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for i, column in enumerate(header):
        # the row's name stays whole on narrow terminals, unless it is a long path
        table.add_column(column, no_wrap=i == 0, max_width=36 if i == 0 else None)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    out.print(table)


def print_session(manifest: dict) -> None:
    """The closing lines of a run: this session's throughput and memory, and on Ray each actor's."""
    timings = manifest.get("timings") or {}
    if timings:
        last = timings[sorted(timings, key=lambda k: int(k.split("_")[1]))[-1]]
        padding = f"padding {last['padding_waste']:.1%}, " if last.get("padding_waste") is not None else ""
        err.print(f"[green]done[/green]: {last['texts']} texts, {last['tokens']} tokens in {last['seconds']:.1f}s, "
                  f"{last['tokens_per_s']:.0f} tokens/s, {padding}peak memory "
                  f"{(last['peak_memory_bytes'] or 0) / 2**20:.0f} MiB")
        for name, actor in sorted(last.get("actors", {}).items()):
            err.print(f"  actor {name}: {actor['shards']} shards, {actor['texts']} texts, {actor['tokens']} tokens, "
                      f"{actor['tokens_per_s']:.0f} tokens/s, peak memory "
                      f"{(actor.get('peak_memory_bytes') or 0) / 2**20:.0f} MiB")


def comma_list(text: Optional[str], kind=int, flag: str = "--layers"):
    """'7,15,22' -> [7, 15, 22]; None stays None."""
    if text is None:
        return None
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError:
        example = {int: "7,15,22", float: "-2,0,2"}.get(kind, "a,b")
        raise ActlabError(f"{flag} '{text}': give comma-separated values such as {example}") from None


OPTIONAL_VALUES = {"--ray": "local"}  # options whose value may be left out


def with_optional_values(argv: list[str]) -> list[str]:
    """`--ray` followed by nothing or by another option means `--ray local`
    (typer has no options with an optional value)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


def error_line(exc: ActlabError) -> str:
    """The message, with the flag of the Python parameter it names when the
    message does not name one already."""
    message = str(exc)
    flag = FLAGS.get(exc.param or "", "--" + (exc.param or "").replace("_", "-"))
    if exc.param and "--" not in message:
        message += f" ({flag})"
    return message
