"""Loading models and the `Model` wrapper the engine runs on."""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch

from . import hooks as hook_points
from .default_model import DEFAULT_MODEL, default_model_dir
from .engine import ExtractConfig, Extractor, OnBatch
from .engine.linears import MATMUL_PATHS, choose, take_paths
from .errors import ActlabError
from .registry import one_of
from .results import Activations
from .saes.features import FeatureExtractor, Features

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZED = ("8bit", "4bit")
AUTO_DTYPE = "auto"  # bfloat16 on CUDA, float32 elsewhere: the generating commands' default
DEFAULT_DTYPE = "float32"  # extraction's: its results match the references to 1e-5
DEFAULT_DEVICE = "auto"  # cuda, then mps, then cpu
DEFAULT_MATMUL = "auto"  # per weight shape, the faster CPU matrix path (engine/linears.py)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """The dtype `dtype` names on `device` ("auto": bfloat16 on CUDA, else float32)."""
    if dtype != AUTO_DTYPE:
        return dtype
    return "bfloat16" if device.type == "cuda" else "float32"


def pick_device(device: str = DEFAULT_DEVICE) -> torch.device:
    if device != "auto":
        try:
            return torch.device(device)
        except RuntimeError:
            raise ActlabError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Model:
    """A causal LM with its tokenizer, hook names and the extraction engine."""

    def __init__(self, hf_model, tokenizer, name: str, dtype: str = "float32"):
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.dtype = dtype
        self.config = hf_model.config.get_text_config()
        self.matmul: dict[str, dict] = {}  # weight shape -> matrix path (actlab.engine.linears.choose)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def matrix_paths(self) -> dict[str, str]:
        """The CPU linear layers' matrix path per weight shape ("OUTxIN" -> "torch" | "onednn")."""
        return {shape: row["path"] for shape, row in self.matmul.items()}

    def take_matrix_paths(self, paths: dict[str, str]) -> None:
        """Compute with these matrix paths per weight shape (a run's, so that a
        resumed run agrees with an uninterrupted one); shapes not named keep theirs."""
        if paths and paths != {shape: self.matrix_paths.get(shape, path) for shape, path in paths.items()}:
            self.matmul = take_paths(self.hf_model, paths)

    @property
    def base_model(self) -> torch.nn.Module:
        """The transformer without its LM head."""
        return self.hf_model.base_model

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.config.hidden_size

    @property
    def architecture(self) -> str:
        return self.config.model_type

    @property
    def pad_id(self) -> int:
        """Any id works: padded positions are masked and never read."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if candidate is not None:
                return candidate
        return 0

    def hook_names(self) -> list[str]:
        return hook_points.hook_names(self.hf_model)

    def hook_widths(self, names: Sequence[str]) -> dict[str, int]:
        """Width of each hook's activation; raw module paths are probed once."""
        return {name: hook_points.hook_width(self.config, name) if name in self._standard_names
                else self._probe_width(name) for name in names}

    @cached_property
    def _standard_names(self) -> set[str]:
        try:
            return set(self.hook_names())
        except ActlabError:
            return set()

    def _probe_width(self, name: str) -> int:
        """Run one token through the model and read the module's output width."""
        widths = {}
        with hook_points.capture(self.hf_model, {name: lambda hidden: widths.setdefault(name, hidden.shape[-1])}), \
                torch.inference_mode():
            self.base_model(input_ids=torch.tensor([[self.pad_id]], device=self.device), use_cache=False)
        if name not in widths:
            raise ActlabError(f"module '{name}' does not run in the forward pass; pick another", param="hooks")
        return widths[name]

    def token_strings(self, ids_per_text: Sequence[Sequence[int]]) -> list[str]:
        """Readable text of every token, texts concatenated. Tokens are decoded
        one at a time (cached per id), except that a character split over
        several byte-level tokens goes whole to the token that completes it
        (the others get ""), so a text's strings join to its decoded text."""
        decode = self.tokenizer.decode
        single = {i: decode([i]) for i in {t for ids in ids_per_text for t in ids}}
        out: list[str] = []
        for ids in ids_per_text:
            pending: list[int] = []
            for token in ids:
                text = decode(pending + [token]) if pending else single[token]
                if text.endswith("\ufffd") and len(pending) < 3:  # an incomplete UTF-8 sequence so far
                    pending.append(token)
                    out.append("")
                    continue
                pending = []
                out.append(text)
        return out

    @cached_property
    def weight_hash(self) -> str:
        """sha256 over every parameter and buffer, in state-dict order."""
        digest = hashlib.sha256()
        for key, tensor in self.hf_model.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    @property
    def spec(self) -> "ModelSpec":
        """This model's identity (id, dtype, weights hash), to load it again elsewhere."""
        return ModelSpec(self.name, self.dtype, self.weight_hash)

    def extract(self, texts: Sequence[str], hooks: Sequence[str] | str | None = None,
                pooling: str | int | list[int] | None = None,
                progress: OnBatch | None = None, cfg: ExtractConfig | None = None, interventions=None,
                **options) -> Activations:
        """Activations at `hooks` for every text, in input order; hooks and
        pooling ("last" by default) may come from `cfg` instead. `options` are
        ExtractConfig fields (batch_size, max_batch_tokens, padding_side,
        max_length, prepend_bos, include_bos); `progress(n_texts, n_tokens)`
        is called after each batch. `interventions` (actlab.Add, Set, Ablate,
        ProjectOut, Cap, EditLatents): one or a list for every text, or one
        list (or None) per text; captured activations at or after an edited
        hook see the edit."""
        cfg = ExtractConfig.of(cfg, hooks=[hooks] if isinstance(hooks, str) else hooks, pooling=pooling, **options)
        return self.run_extractor(Extractor(self, cfg), texts, progress, interventions)

    def features(self, texts: Sequence[str], saes=None, keep_dense: bool = False, progress: OnBatch | None = None,
                 cfg: ExtractConfig | None = None, interventions=None, **options) -> Features:
        """SAE features of every text in one forward pass for any number of SAEs.

        saes: SAE objects, SAE folders / release ids, or a {name: SAE} mapping;
        None: the SAEs actlab ships for this model (the default model's).
        Pooling (an option, "last" by default) happens in feature space over
        the same real tokens as `extract`; prepend_bos defaults to the SAEs'
        own. `options` (pooling among them) and `interventions` as for `extract`.
        """
        cfg = ExtractConfig.of(cfg, **options)
        return self.run_extractor(FeatureExtractor(self, saes, cfg, keep_dense), texts, progress, interventions)

    def run_extractor(self, extractor: Extractor, texts: Sequence[str], progress: OnBatch | None = None,
                      interventions=None):
        """Call an extractor and record the peak memory in its statistics."""
        result = extractor(texts, on_batch=progress or None, interventions=interventions)
        result.stats.peak_memory_bytes = peak_memory_bytes(self.device)
        return result

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, {self.architecture}, {self.n_layers} layers, "
                f"d_model={self.d_model}, {self.dtype}, {self.device})")


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class ModelSpec:
    """A model's identity, enough to load the same model anywhere: its id (a
    hub id, folder, .gguf file or alias), dtype, the sha256 of its weights
    when known (a load is checked against it), and the name it was given
    where the id is a folder made absolute for other processes."""

    id: str
    dtype: str = DEFAULT_DTYPE
    weights_sha256: str | None = None
    name: str | None = None  # as given, when `id` is that folder made absolute
    matmul: str = DEFAULT_MATMUL  # the CPU linear layers' matrix path (load_model): float rounding only

    @classmethod
    def of(cls, model: "Model | ModelSpec | str") -> "ModelSpec":
        """The spec of a loaded model, a spec, or a model name (loaded as float32, unchecked)."""
        if isinstance(model, ModelSpec):
            return model
        if isinstance(model, Model):
            return model.spec
        if isinstance(model, str):
            return cls(model)
        raise ActlabError(f"a model must be a Model, a ModelSpec or a name, not {type(model).__name__}",
                          param="model")

    @classmethod
    def from_settings(cls, settings: dict) -> "ModelSpec":
        """The spec a run's manifest records (its settings' "model" entry)."""
        return cls(settings["id"], settings.get("dtype", "float32"), settings.get("weights_sha256"))

    def absolute(self) -> "ModelSpec":
        """A local folder's id made absolute (another process's working
        directory is not this one's), the name as given kept."""
        local = Path(self.id).expanduser()
        if not local.exists() or local.is_absolute():
            return self
        return replace(self, id=str(local.absolute()), name=self.name or self.id)

    def load(self, check: bool = True, device: str = DEFAULT_DEVICE, fix: str = "pass the run's model") -> "Model":
        """The model, named as given; with check, refused in one line when its
        weights are not weights_sha256's (`fix` says what to do instead)."""
        model = load_model(self.id, device=device, dtype=self.dtype, matmul=self.matmul)
        model.name = self.name or model.name
        if check and self.weights_sha256 and model.weight_hash != self.weights_sha256:
            raise ActlabError(f"'{model.name}' on {socket.gethostname()} has other weights than the run's model "
                              f"'{self.name or self.id}'; {fix}", param="model")
        return model


def load_run_model(spec: dict, name: str | None = None, device: str = DEFAULT_DEVICE, alternative: str = "") -> Model:
    """The model a run recorded ({"id", "weights_sha256"} from its manifest),
    or `name`; refused when the weights differ from the run's."""
    recorded = ModelSpec.from_settings(spec)
    wanted = replace(recorded, id=name, name=None) if name else recorded
    return wanted.load(device=device, fix=f"pass the run's model{', ' + alternative if alternative else ''}")


def load_model(name_or_path: str = DEFAULT_MODEL, device: str = DEFAULT_DEVICE, dtype: str = DEFAULT_DTYPE,
               attn_implementation: str | None = None, matmul: str = DEFAULT_MATMUL) -> Model:
    """Load a causal LM: a hub id, a local folder, a .gguf file, or the default alias.

    dtype is float32, bfloat16, float16, auto (bfloat16 on CUDA, else
    float32; `model.dtype` records the one loaded), or (CUDA, bitsandbytes)
    8bit / 4bit.
    matmul (CPU, float32): the linear layers' matrix path, "auto" (per weight
    shape, whichever of torch.mm and oneDNN-prepacked this machine measured
    faster, the same in every process: engine/machine.py), "torch" or
    "onednn" (actlab.engine.linears); `model.matmul` records it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    one_of("dtype", dtype, [*DTYPES, AUTO_DTYPE, *QUANTIZED], param="dtype")
    one_of("matmul path", matmul, list(MATMUL_PATHS), param="matmul")
    target = pick_device(device)
    dtype = resolve_dtype(dtype, target)
    source, extra = _locate(name_or_path)
    kwargs: dict = dict(extra)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dtype in QUANTIZED:
        kwargs.update(_quantization_kwargs(dtype, target))
    else:
        kwargs["dtype"] = DTYPES[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        hf_model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ActlabError(f"cannot load model '{name_or_path}': {str(exc).splitlines()[0]} "
                          "(pass a local folder, a .gguf file, a hub id, or "
                          f"'{DEFAULT_MODEL}')") from None
    except ValueError as exc:
        raise ActlabError(f"cannot load model '{name_or_path}': {str(exc).splitlines()[0]}") from None
    if dtype not in QUANTIZED:
        hf_model = hf_model.to(target)
    model = Model(hf_model, tokenizer, name_or_path, dtype)
    model.matmul = choose(hf_model, matmul)
    return model


def _locate(name_or_path: str) -> tuple[str, dict]:
    """(source for from_pretrained, extra kwargs) for an alias, file, folder or hub id."""
    if name_or_path == DEFAULT_MODEL:
        return str(default_model_dir()), {}
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ActlabError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not (path / "config.json").exists():
            raise ActlabError(f"{path} is not a model folder (no config.json); pass a folder "
                              "written by save_pretrained, a .gguf file or a hub id")
        return str(path), {}
    if name_or_path.count("/") != 1 or name_or_path.startswith(("/", ".")):
        raise ActlabError(f"unknown model '{name_or_path}': not a file, a folder, a hub id "
                          f"(owner/name) or the alias '{DEFAULT_MODEL}'")
    return name_or_path, {}


def _quantization_kwargs(dtype: str, device: torch.device) -> dict:
    if device.type != "cuda":
        raise ActlabError(f"dtype '{dtype}' needs a CUDA GPU (bitsandbytes); use float32 or bfloat16 here")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ActlabError("8bit/4bit loading needs bitsandbytes: pip install 'actlab[quant]'") from None
    config = BitsAndBytesConfig(load_in_8bit=dtype == "8bit", load_in_4bit=dtype == "4bit")
    return {"quantization_config": config, "device_map": {"": device.index or 0}}
