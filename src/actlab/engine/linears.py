"""A CPU float32 model's linear layers through the fastest matrix path the
CPU has, chosen once when the model is loaded.

Two paths compute `x @ W.T + b`: torch's (MKL or OpenBLAS through torch.mm)
and oneDNN with the weight reordered once into its blocked layout
("prepacked", torch.ops.mkldnn). Which is faster depends on the CPU and the
weight's shape: on AVX-512 CPUs oneDNN has measured twice torch.mm's
throughput for every shape, on AVX2-only CPUs about the same for a
transformer block's shapes and up to 1.6x for a wide LM head. So `choose`
times both per distinct weight shape (once per machine, below) and takes one
path for all the blocks' layers, oneDNN only where it is clearly faster over
them together (PACKED_GAIN), and one for the LM head. `actlab bench extract` and
`actlab bench generate` record the figures.

A packed layer stays exact: it runs the plain linear whenever autograd
wants a gradient, and repacks when its weight was changed in place (its
version counter moved), so outputs equal the plain forward's within float32
rounding (1e-5 relative). The packed copy costs the weight's size again in
memory; `matmul="torch"` keeps every layer plain. Copies and pickles of a
packed model work (the packed copy is made again at their first product).

"auto" times both paths once per machine, not per process: the figures and
the choice are recorded in $ACTLAB_HOME/machine.json (engine/machine.py) and
every later process on the machine takes the same path for the shape. Timed
in each process, two processes took different paths where both were close,
and on an AVX-512 Xeon a mix of paths then moved block 20 of the default
model by up to 4e-5 of its largest magnitude against another (one path
against the other alone: 8e-7; why is not established, docs/extraction.md),
so a resumed run did not agree with an uninterrupted one. A run also
records the paths its first process took in its manifest, and every later
process of the run takes them (`take_paths`, runs/job.py), whatever it
would choose itself: a resumed run, or Ray workers on another CPU.

The probe cycles through the model's own weights of the shape (up to
PROBE_BYTES of them), as a forward streams them: on an AVX-512 Xeon one hot
weight measured torch.mm up to 1.2x faster than the same shape cycled
through, and oneDNN ahead where its weights stream.

SAE encoders (actlab.saes.SAE.pre_activations) take the same path where
`faster_path` says so for their W_enc.T: on AVX2, x @ W_enc ran at 40-46
GFLOP/s and the prepacked product at about 70.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..default_model import actlab_home
from .machine import recorded

MATMUL_PATHS = ("auto", "torch", "onednn")
PACKED_GAIN = 1.1  # auto packs a shape when oneDNN is at least this much faster
PROBE_ROWS = 128  # rows of the timing probe: a decode step's slots, a tenth of an extraction batch ...
PROBE_FLOPS = 2e8  # ... fewer (16 at least) where one product would pass this much work; repeated up to it
PROBE_BYTES = 64 * 2 ** 20  # the probe cycles through at most this much of the model's weights of a shape


def packable(weight: torch.Tensor | None) -> bool:
    """A float32 matrix on a CPU with oneDNN available."""
    return (weight is not None and weight.dim() == 2 and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def matrix_throughput(weights: Sequence[torch.Tensor], rows: int | None = None) -> dict[str, float]:
    """GFLOP/s of both paths for `rows` inputs times each of `weights` (out,
    in) in turn, as a forward streams them (up to PROBE_BYTES of them):
    {"torch": ..., "onednn": ...}, best of three timings each, alternating."""
    weights = [w.detach() for w in weights[:max(1, PROBE_BYTES // (4 * weights[0].numel()))]]
    rows = rows or min(PROBE_ROWS, max(16, int(PROBE_FLOPS // (2 * weights[0].numel()))))
    x = torch.randn(rows, weights[0].shape[1])  # (rows, in)
    packed = [torch.ops.mkldnn._reorder_linear_weight(w.contiguous()) for w in weights]
    paths = {"torch": lambda: [torch.nn.functional.linear(x, w) for w in weights],
             "onednn": lambda: [torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "") for p in packed]}
    flops = 2.0 * rows * sum(w.numel() for w in weights)
    repeat = max(1, int(PROBE_FLOPS // flops))
    best = dict.fromkeys(paths, float("inf"))
    with torch.inference_mode():
        for run in paths.values():
            run()  # warm up
        for _ in range(3):
            for name, run in paths.items():
                start = time.perf_counter()
                for _ in range(repeat):
                    run()
                best[name] = min(best[name], (time.perf_counter() - start) / repeat)
    return {name: flops / seconds / 1e9 for name, seconds in best.items()}


_DECIDED: dict[tuple, dict] = {}  # (record file, threads, shape) -> this process's copy of the record


def faster_path(shape: tuple[int, int], weights: Sequence[torch.Tensor] = ()) -> tuple[str, dict[str, float]]:
    """("onednn" or "torch", GFLOP/s of both) for a weight (out, in) of this
    shape: this machine's recorded decision, measured the first time (on
    `weights`, else a random weight of the shape)."""
    shape = tuple(shape)
    memo = (str(actlab_home()), torch.get_num_threads(), shape)
    if memo not in _DECIDED:
        def measure() -> dict:
            figures = matrix_throughput(list(weights) or [torch.randn(shape)])
            path = "onednn" if figures["onednn"] >= PACKED_GAIN * figures["torch"] else "torch"
            return {"path": path, **{name: round(v, 1) for name, v in figures.items()}}
        _DECIDED[memo] = recorded("matmul", f"{shape[0]}x{shape[1]}", measure)
    entry = _DECIDED[memo]
    return entry["path"], {name: entry[name] for name in ("torch", "onednn")}


def choose(hf_model: nn.Module, matmul: str = "auto") -> dict[str, dict]:
    """Pack the model's linear layers (nn.Linear, and transformers' Conv1D
    of GPT-2) as `matmul` says. "auto": one path for every linear layer of
    the blocks, whichever this machine measured faster over their shapes
    together (`one_path`), and the LM head's own. Returns per shape
    "OUTxIN" the path taken, how many layers have it, and (auto) both
    paths' GFLOP/s for the shape."""
    if matmul not in MATMUL_PATHS:
        raise ValueError(f"matmul must be one of {', '.join(MATMUL_PATHS)}, not '{matmul}'")
    chosen = {}
    for by_shape in _groups(hf_model).values():
        figures = {shape: faster_path(shape, [_kind(m).matrix(m) for m in modules])[1]
                   for shape, modules in by_shape.items()} if matmul == "auto" else {}
        path = one_path(by_shape, figures) if matmul == "auto" else matmul
        for shape, modules in by_shape.items():
            for module in modules:
                (pack if path == "onednn" else unpack)(module)
            chosen[f"{shape[0]}x{shape[1]}"] = {"path": path, "layers": len(modules), **{
                f"{name}_gflops": round(v, 1) for name, v in figures.get(shape, {}).items()}}
    return chosen


def take_paths(hf_model: nn.Module, paths: dict[str, str]) -> dict[str, dict]:
    """Pack the model's linear layers as `paths` says ("OUTxIN" -> "torch"
    or "onednn", what `choose` returned for a run's first process), so a
    resumed run or another worker computes with the paths the run started
    with; shapes it does not name keep theirs. Returns what `choose` does,
    without figures."""
    chosen = {}
    for by_shape in _groups(hf_model).values():
        for shape, modules in by_shape.items():
            name = f"{shape[0]}x{shape[1]}"
            path = paths.get(name) or ("onednn" if is_packed(modules[0]) else "torch")
            for module in modules:
                (pack if path == "onednn" else unpack)(module)
            chosen[name] = {"path": path, "layers": len(modules)}
    return chosen


def _groups(hf_model: nn.Module) -> dict[bool, dict[tuple[int, int], list[nn.Module]]]:
    """The packable linear layers by shape (out, in): the blocks' (False) and the LM head's (True)."""
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    groups: dict[bool, dict[tuple[int, int], list[nn.Module]]] = {False: {}, True: {}}
    for module in hf_model.modules():
        kind = _kind(module)
        if kind is not None and packable(module.weight):
            groups[module is head].setdefault(tuple(kind.matrix(module).shape), []).append(module)
    return groups


def one_path(by_shape: dict[tuple[int, int], list[nn.Module]], figures: dict[tuple[int, int], dict]) -> str:
    """"onednn" where the layers' products together take PACKED_GAIN times
    longer through torch, else "torch". One path for a model's blocks, not
    one per shape: with the default model's blocks on an AVX-512 Xeon, a mix
    (oneDNN for the MLP's gate and up only) put batched extraction 1.2e-5
    from one text at a time at block 15, against 6e-6 all-torch and 2e-6
    all-oneDNN, and mixes differed most between processes (docs/extraction.md)."""
    seconds = {path: sum(len(modules) * shape[0] * shape[1] / figures[shape][path]
                         for shape, modules in by_shape.items()) for path in ("torch", "onednn")}
    return "onednn" if seconds["torch"] >= PACKED_GAIN * seconds["onednn"] else "torch"


class PackedWeight:
    """A weight (out, in) in oneDNN's blocked layout, packed at the first
    product and again whenever the weight was changed in place or replaced."""

    def __init__(self):
        self.packed, self.source = None, None  # the packed copy; (data_ptr, version) it was packed from

    def __getstate__(self) -> dict:  # copies and pickles repack at their first product (oneDNN's
        return {}  # blocked tensors cannot be copied or saved)

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def applies(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """x @ weight.T may take this path: CPU float32, no gradient wanted."""
        return (x.device.type == "cpu" and x.dtype == torch.float32 and packable(weight)
                and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., in) @ weight.T (+ bias) -> (..., out)."""
        source = (weight.data_ptr(), weight._version)
        if source != self.source:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())
            self.source = source
        bias = bias.detach() if bias is not None else None
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, bias, "none", [], "")


class PackedLinear(nn.Linear):
    """An nn.Linear whose product runs through its PackedWeight (`pack`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packed_weight.applies(x, self.weight):
            return super().forward(x)
        return self.packed_weight.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class _Kind:
    plain: type
    packed: type
    matrix: Callable[[nn.Module], torch.Tensor]  # the module's weight as (out, in)


class PackedConv1D(Conv1D):
    """GPT-2's Conv1D (weight (in, out)) through its PackedWeight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packed_weight.applies(x, self.weight):
            return super().forward(x)
        return self.packed_weight.linear(x, self.weight.T, self.bias)


_KINDS = [_Kind(nn.Linear, PackedLinear, lambda m: m.weight), _Kind(Conv1D, PackedConv1D, lambda m: m.weight.T)]


def _kind(module: nn.Module) -> _Kind | None:
    return next((k for k in _KINDS if type(module) in (k.plain, k.packed)), None)


def pack(module: nn.Module) -> None:
    """Run this linear layer through oneDNN with its weight prepacked."""
    kind = _kind(module)
    if type(module) is not kind.packed:
        module.__class__, module.packed_weight = kind.packed, PackedWeight()


def unpack(module: nn.Module) -> None:
    """Back to the plain layer (a no-op for any other module)."""
    kind = _kind(module)
    if kind is not None and type(module) is kind.packed:
        module.__class__ = kind.plain
        del module.packed_weight


@contextlib.contextmanager
def plain_linears(hf_model: nn.Module):
    """Inside: every linear layer of the model runs its plain forward (the
    model as Hugging Face runs it); on leaving, the packed ones again."""
    packed = [m for m in hf_model.modules() if is_packed(m)]
    for module in packed:
        unpack(module)
    try:
        yield
    finally:
        for module in packed:
            pack(module)


def is_packed(module: nn.Module) -> bool:
    kind = _kind(module)
    return kind is not None and type(module) is kind.packed
