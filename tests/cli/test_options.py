"""The command line is the configs: every option of every command comes from
a config dataclass field, with that field's default, and every field of a
config a command takes is an option, unless the command sets it itself (the
exclusions below, each with its reason)."""

import dataclasses
import inspect

import pytest
import typer
from typer.testing import CliRunner

from actlab.cli import app

EXCLUDED = {  # command -> fields the command sets itself, and why
    ("models",): {"model.model": "the model is the NAME argument"},
    ("features",): {"hooks": "the SAEs' hooks"},
    ("contrast",): {"hooks": "the SAEs' hooks", "pooling": "ContrastConfig.position", "include_bos": "the position"},
    ("demo",): {"model.dtype": "the demo runs in float32", "model.matmul": "the demo's matrix path is auto"},
    ("sae", "quality"): {"fields.id": "quality reads only texts", "fields.label": "as id",
                         "fields.category": "as id"},
    ("traits", "run"): {"vectors.seed": "--seed is generation's; the split keeps its default seed",
                        "steer.max_new_tokens": "steering answers as long as the run's generation (its default)",
                        "steer.edits": "the sweep's edits are `traits steer`'s (--ablate, --cap, --clamp)"},
    ("traits", "steer"): {"cfg.edits": "--ablate, --cap, --clamp (EditOptions), parsed into an EditConfig"},
    ("generate",): {"cfg.generation": "GenerationConfig's fields are the command's own options (--max-new-tokens ...)",
                    "cfg.steer": "--steer PATH:LAYER:COEFF (VectorOptions), parsed into a FileVector",
                    "cfg.project": "--project PATH:LAYER (VectorOptions), parsed into FileVectors",
                    "cfg.edits": "--ablate, --cap, --clamp (EditOptions), parsed into an EditConfig"},
    ("bench", "generate"): {"bench.device": "every engine runs on the CPU, in its own process"},
    ("bench", "ray"): {"bench.device": "the ray benchmark's own --device (cpu by default)"},
    ("bench", "capacity"): {"bench.device": "the store is measured on the CPU"},
    ("latents",): {"fields.id": "windows are named by text and offset", "fields.label": "as id",
                   "fields.category": "as id"},
}


def commands(group: typer.Typer, prefix=()):
    if prefix and group.registered_callback and hasattr(group.registered_callback.callback, "__actlab_options__"):
        yield prefix, group.registered_callback.callback  # a group that is a command too (actlab latents)
    for info in group.registered_commands:
        yield prefix + (info.name or info.callback.__name__.replace("_", "-"),), info.callback
    for sub in group.registered_groups:
        yield from commands(sub.typer_instance, prefix + (sub.name,))


ALL = dict(commands(app))


def test_every_command_is_walked():
    assert {("extract",), ("features",), ("contrast",), ("models",), ("analyze",), ("report",), ("explore",),
            ("demo",), ("generate",), ("sae", "quality"), ("sae", "train"), ("traits", "generate"), ("traits", "vectors"),
            ("traits", "steer"), ("traits", "monitor"), ("traits", "report"), ("traits", "run"),
            ("bench", "extract"), ("bench", "ray"), ("bench", "trait-quality"), ("latents",)} <= set(ALL)


def problems(path, callback) -> list[str]:
    """What is wrong with a command's options: loose options, doubled flags,
    defaults other than the config's, config fields with no option."""
    found = []
    options = {p.name: p.default for p in inspect.signature(callback).parameters.values()
               if isinstance(p.default, typer.models.OptionInfo)}
    fields = getattr(callback, "__actlab_options__", {})
    found += [f"option {name} has no config field" for name in sorted(set(options) - set(fields))]
    flags = [flag for info in options.values() for decl in info.param_decls for flag in decl.split("/")]
    found += [f"flag {flag} is given twice" for flag in sorted({f for f in flags if flags.count(f) > 1})]
    for name, info in options.items():
        if name not in fields:
            continue
        owner = fields[name]
        expected = owner.default
        if owner.default is dataclasses.MISSING:
            expected = ...
        elif owner.comma is not None and owner.default is not None:
            expected = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in owner.default) or None
        if info.default not in (expected, ...):
            found.append(f"--{name} defaults to {info.default!r}, its field to {expected!r}")
    excluded = EXCLUDED.get(path, {})
    if set(getattr(callback, "__actlab_excluded__", ())) != set(excluded):
        found.append(f"excludes {getattr(callback, '__actlab_excluded__', ())}, the test lists {sorted(excluded)}")
    generated = {(o.config, o.field.name) for o in fields.values()}
    for config, cls in getattr(callback, "__actlab_configs__", {}).items():
        for f in dataclasses.fields(cls):
            if (config, f.name) not in generated and f.name not in excluded and f"{config}.{f.name}" not in excluded:
                found.append(f"{cls.__name__}.{f.name} has no option")
    return found


@pytest.mark.parametrize("path", sorted(ALL), ids=" ".join)
def test_options_are_config_fields_with_their_defaults(path):
    assert not problems(path, ALL[path]), f"actlab {' '.join(path)}: {problems(path, ALL[path])}"


def test_the_walk_finds_each_kind_of_drift():
    from actlab.cli.common import with_options
    from actlab.traits import VectorsConfig

    def by_hand(seed: int = typer.Option(0), held: float = typer.Option(0.2, "--held-out")) -> None:
        """a hand-written option and a doubled flag"""

    @with_options(cfg=VectorsConfig)
    def drifted(cfg: VectorsConfig, extra: int = typer.Option(1)) -> None:
        """a loose option beside generated ones"""

    @with_options(cfg=VectorsConfig, exclude=("held_out",))
    def unlisted(cfg: VectorsConfig) -> None:
        """a field left out without a reason in the test"""

    assert problems(("x",), by_hand) == ["option held has no config field", "option seed has no config field"]
    assert problems(("x",), drifted) == ["option extra has no config field"]
    assert "excludes ('held_out',), the test lists []" in problems(("x",), unlisted)
    assert "VectorsConfig.held_out has no option" in problems(("x",), unlisted)
    drifted.__signature__ = inspect.signature(drifted).replace(parameters=[
        p.replace(default=typer.Option(60.0)) if p.name == "pos_min" else p
        for p in inspect.signature(drifted).parameters.values()])
    assert "--pos_min defaults to 60.0, its field to 50.0" in problems(("x",), drifted)


@pytest.mark.parametrize("path", sorted(ALL), ids=" ".join)
def test_every_command_has_help(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_a_config_default_is_the_commands_default():
    """One default, one place: the trait shard size, the run shard size, the
    judge's keep thresholds and the steering length come from the library."""
    from actlab.cli.common import RunOptions
    from actlab.cli.traits import TraitOptions
    from actlab.activations.run import DEFAULT_SHARD_SIZE
    from actlab.traits import SteerConfig, VectorsConfig
    from actlab.traits.run import TRAIT_SHARD_SIZE

    from actlab.generation.run import GENERATION_SHARD_SIZE, GenerateJob

    shard_size = RunOptions.__dataclass_fields__["shard_size"]
    assert shard_size.default is None  # each run kind's own default, named in the help
    assert f"{DEFAULT_SHARD_SIZE} for extract" in shard_size.metadata["help"]
    assert f"{GENERATION_SHARD_SIZE} for generate" in shard_size.metadata["help"]
    assert GenerateJob.__dataclass_fields__["shard_size"].default == GENERATION_SHARD_SIZE
    assert TraitOptions.__dataclass_fields__["shard_size"].default == TRAIT_SHARD_SIZE
    assert SteerConfig().max_new_tokens is None  # the run's generation length, read by steer_sweep
    vectors = ALL[("traits", "vectors")].__actlab_options__
    assert vectors["pos_min"].default == VectorsConfig().pos_min and vectors["held_out"].default == 0.2


def test_generating_commands_default_to_auto_dtype():
    """bfloat16 on CUDA unless told (the generation engine's default there);
    extraction keeps float32, whose results match the references to 1e-5."""
    def dtype_default(path):
        return inspect.signature(ALL[path]).parameters["dtype"].default.default

    for path in [("generate",), ("traits", "generate"), ("traits", "run")]:
        assert dtype_default(path) == "auto", path
    for path in [("extract",), ("features",), ("contrast",)]:
        assert dtype_default(path) == "float32", path


def test_no_default_is_written_twice():
    """A value default lives in the library: a dataclass of actlab/cli/
    holds only what the shell alone has (where files go, flag strings it
    parses, switches), so each of its fields defaults to nothing, None, a
    bool, an empty list, or a named constant (the library's, or the one
    place the command's own default is written). A literal such as
    top=10 or method="mean_diff" beside the library's own default would
    drift from it: give the library a config and generate the options from it."""
    import ast
    from pathlib import Path

    import actlab.cli

    written, checked = [], 0
    for path in sorted(Path(actlab.cli.__file__).parent.glob("*.py")):
        for cls in ast.parse(path.read_text()).body:
            if not isinstance(cls, ast.ClassDef) or not any("dataclass" in ast.unparse(d) for d in cls.decorator_list):
                continue
            for node in cls.body:
                if not isinstance(node, ast.AnnAssign) or node.value is None:
                    continue
                value = node.value
                defaults = [value]
                if isinstance(value, ast.Call) and ast.unparse(value.func).endswith("field"):
                    defaults = [k.value for k in value.keywords if k.arg == "default"]
                    defaults += [k.value for k in value.keywords if k.arg == "default_factory"
                                 and ast.unparse(k.value) != "list"]
                for default in defaults:
                    checked += 1
                    named = isinstance(default, (ast.Name, ast.Attribute))
                    empty = isinstance(default, ast.Constant) and (default.value is None or isinstance(default.value, bool))
                    if not (named or empty):
                        written.append(f"{path.name} {cls.name}.{node.target.id} = {ast.unparse(default)}")
    assert checked > 20 and not written, f"defaults written in cli/ beside the library's: {written}"
