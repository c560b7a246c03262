"""The house rules the import linter cannot check: modules of one job (no
module over 400 lines), functions with few arguments
(no public function or method with more than 7 parameters; a config is one).
Dataclass constructors are their fields, and CLI commands are generated from
configs (tests/cli/test_options.py), so neither counts."""

import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

import actlab

MAX_LINES, MAX_PARAMETERS = 400, 7


def modules():
    for info in pkgutil.walk_packages(actlab.__path__, "actlab."):
        if not info.name.endswith("__main__"):
            yield importlib.import_module(info.name)


def test_no_module_over_400_lines():
    root = Path(actlab.__file__).parent
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by job: {long}"


def test_no_public_function_with_more_than_7_parameters():
    crowded = {}
    for module in modules():
        if module.__name__.startswith("actlab.cli."):
            continue
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            functions = [(name, obj)] if inspect.isfunction(obj) else []
            if inspect.isclass(obj):
                functions = [(f"{name}.{attr}", f) for attr, f in vars(obj).items() if inspect.isfunction(f)
                             and (not attr.startswith("_") or (attr == "__init__" and not dataclasses.is_dataclass(obj)))]
            for qualified, function in functions:
                params = [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]
                key = f"{module.__name__}.{qualified}"
                if len(params) > MAX_PARAMETERS:
                    crowded[key] = len(params)
    assert not crowded, f"pass a config instead: {crowded}"


def test_no_two_public_classes_or_functions_share_a_name():
    """One name, one meaning: a public class or function defined in one module
    of actlab has no namesake defined in another (LatentStats, Example,
    model_settings and generate_run each meant two things)."""
    import ast

    root = Path(actlab.__file__).parent
    defined: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                defined.setdefault(node.name, []).append(str(path.relative_to(root)))
    shared = {name: where for name, where in defined.items() if len(where) > 1}
    assert not shared, f"give each its own name: {shared}"


def test_src_actlab_holds_no_benchmark():
    """Benchmarks live in the repository's benchmarks/ package, out of the
    wheel: no module of actlab is named for them, imports a peer it is
    measured against, or writes benchmarks/results (actlab.cli.bench only
    finds the repository's)."""
    import ast

    root = Path(actlab.__file__).parent
    peers = {"transformer_lens", "nnsight", "vllm", "vllm_lens", "sae_dashboard", "benchmarks"}  # measured against
    found = []
    for path in sorted(root.rglob("*.py")):
        name = str(path.relative_to(root))
        if "bench" in path.stem and name != "cli/bench.py" or "bench" in path.relative_to(root).parts[:-1]:
            found.append(f"{name}: a benchmark module")
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{name}: imports {m}" for m in modules if m.split(".")[0] in peers]
        if "benchmarks/results" in path.read_text():
            found.append(f"{name}: writes benchmark results")
    assert not found, found


def imported(path: Path, package: str) -> list[tuple[str, list[str]]]:
    """(absolute module, names) of each import in the file at `path` of `package`."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((module, [a.name for a in node.names]))
    return found


def test_report_reads_no_run_and_computes_no_statistics():
    """report/ draws and writes what pipelines gathered: it imports no table
    reader (pyarrow, pandas, polars, duckdb, actlab.storage's readers), no run
    kind or run opener, and no statistics (actlab.analyses, scipy, sklearn)."""
    root = Path(actlab.__file__).parent
    libraries = {"pyarrow", "pandas", "polars", "duckdb", "scipy", "sklearn", "safetensors"}
    found = []
    for path in sorted((root / "report").glob("*.py")):
        for module, names in imported(path, "actlab.report"):
            parts = module.split(".")
            if parts[0] in libraries or module.startswith("actlab.analyses"):
                found.append(f"{path.name}: {module}")
            elif parts[-1] in ("run", "runs", "manifest", "activations", "features") or \
                    [n for n in names if n.endswith("Run") or n.startswith(("read_", "open_"))]:
                found.append(f"{path.name}: {module} {names}")
    assert not found, f"gather these in actlab.pipelines: {found}"


def test_every_run_kind_lives_at_its_package_run_module():
    """One way to be a run kind: its reader (and job) at actlab.<kind>/run.py."""
    from actlab.runs import RUN_KINDS

    where = {name: kind.reader.__module__ for name, kind in RUN_KINDS.items()}
    assert len(where) >= 6
    misplaced = {name: module for name, module in where.items()
                 if not (module.startswith("actlab.") and module.count(".") == 2 and module.endswith(".run"))}
    assert not misplaced, f"move these to <kind>/run.py: {misplaced}"


def test_no_library_dataclass_is_the_command_lines_alone():
    """Library configs are the library's: a dataclass defined outside cli/ is
    used by the library itself (a function takes it, a pipeline builds it),
    not only by a command. One the shell alone uses belongs in cli/."""
    import ast

    root = Path(actlab.__file__).parent
    defined, used = {}, {}
    for path in sorted(root.rglob("*.py")):
        name = str(path.relative_to(root))
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                defined[node.name] = name
        if name.startswith("cli/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in defined and defined[node.name] == name:
                continue  # the definition itself is no use
            word = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if word:
                used.setdefault(word, set()).add(name)
    # a use: a mention in a library module, the class's own body left out; the
    # top-level API's own types (actlab.Set, actlab.Ablate) are the users' to use
    alone = sorted(f"{module}: {cls}" for cls, module in defined.items()
                   if not module.startswith("cli/") and not used.get(cls) and cls not in actlab.__all__)
    assert not alone, f"move these to cli/ or give the library a use of them: {alone}"
