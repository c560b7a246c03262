"""What extraction returns: pooled or per-token activations by hook name, on
a base shared with SAE features (actlab.saes.features.Features)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import numpy as np
import pyarrow as pa
import torch

from .errors import ActlabError


@dataclass
class ExtractStats:
    n_texts: int
    n_tokens: int  # real tokens
    n_padded_tokens: int  # token slots the forward passes computed, padding included
    seconds: float
    n_truncated: int = 0
    oom_splits: int = 0
    peak_memory_bytes: int | None = None

    @property
    def padding_waste(self) -> float:
        return 1 - self.n_tokens / self.n_padded_tokens if self.n_padded_tokens else 0.0

    @property
    def texts_per_s(self) -> float:
        return self.n_texts / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else 0.0

    def add(self, other: "ExtractStats") -> None:
        """Add another call's counts (a run sums its shards'; seconds are the run's own)."""
        self.n_texts += other.n_texts
        self.n_tokens += other.n_tokens
        self.n_padded_tokens += other.n_padded_tokens
        self.n_truncated += other.n_truncated
        self.oom_splits += other.oom_splits

    def summary(self) -> str:
        parts = [f"{self.n_texts} texts, {self.n_tokens} tokens in {self.seconds:.1f}s",
                 f"{self.texts_per_s:.1f} texts/s, {self.tokens_per_s:.0f} tokens/s",
                 f"padding {self.padding_waste:.1%}"]
        if self.peak_memory_bytes:
            parts.append(f"peak memory {self.peak_memory_bytes / 2**20:.0f} MiB")
        if self.n_truncated:
            parts.append(f"{self.n_truncated} texts truncated")
        if self.oom_splits:
            parts.append(f"{self.oom_splits} batches split after out-of-memory")
        return "; ".join(parts)


def vector_column(values: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) float32 -> an Arrow fixed_size_list<float32>[d] column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), values.shape[1])


def column_matrix(column: pa.ChunkedArray | pa.FixedSizeListArray) -> np.ndarray:
    """A fixed_size_list<float32>[d] column -> (n, d) float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy().reshape(-1, column.type.list_size)


def summary_html(title: str, rows: list[tuple[str, str]]) -> str:
    """The short table a notebook shows for a result or a run."""
    body = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td style='text-align:left'>{escape(v)}</td></tr>"
                   for k, v in rows)
    return f"<b>{escape(title)}</b><table>{body}</table>"


class Tabular:
    """Anything with a main table, `to_arrow()` (results, runs): the same rows
    in pandas and polars."""

    def to_pandas(self):
        """`to_arrow()` as a pandas DataFrame."""
        return self.to_arrow().to_pandas()

    def to_polars(self):
        """`to_arrow()` as a polars DataFrame."""
        try:
            import polars as pl
        except ImportError:
            raise ActlabError("to_polars needs polars: pip install polars") from None
        return pl.from_arrow(self.to_arrow())


@dataclass(kw_only=True)
class Result(Tabular):
    """Rows in input order. Pooled: one row per text. Per-token ('all'): text i
    owns rows offsets[i]:offsets[i + 1], whose token strings are
    tokens[offsets[i]:offsets[i + 1]]."""

    pooling: str
    n_tokens: torch.Tensor  # (n_texts,) tokens per text, BOS included
    offsets: torch.Tensor | None = None  # (n_texts + 1,) per-token runs
    tokens: list[str] | None = None
    token_ids: torch.Tensor | None = None
    stats: ExtractStats | None = None
    has_bos: bool = False
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.n_tokens)

    @property
    def per_token(self) -> bool:
        return self.offsets is not None

    def row_columns(self, first_text: int = 0) -> dict[str, pa.Array]:
        """text_id (and, per token, position / token_id / token), or n_tokens per text."""
        counts = self.n_tokens.numpy()
        text_ids = np.arange(first_text, first_text + len(counts))
        if not self.per_token:
            return {"text_id": pa.array(text_ids, pa.int64()), "n_tokens": pa.array(counts, pa.int32())}
        columns = {"text_id": pa.array(np.repeat(text_ids, counts), pa.int64()),
                   "position": pa.array(np.concatenate([np.arange(c) for c in counts]) if len(counts)
                                        else np.zeros(0), pa.int32())}
        if self.token_ids is not None:
            columns["token_id"] = pa.array(self.token_ids.numpy(), pa.int32())
        if self.tokens is not None:
            columns["token"] = pa.array(self.tokens, pa.string())
        return columns

    def summary_rows(self) -> list[tuple[str, str]]:
        rows = [("texts", str(len(self))), ("pooling", self.pooling),
                ("tokens", str(int(self.n_tokens.sum())))]
        if self.stats is not None:
            rows.append(("extraction", self.stats.summary()))
        return rows

    def _repr_html_(self) -> str:
        return summary_html(type(self).__name__, self.summary_rows())


@dataclass
class Activations(Result):
    """Activations by hook name: `acts[hook]` is (n_texts, d) pooled, or
    (n_tokens, d) per token."""

    values: dict[str, torch.Tensor]

    def __getitem__(self, hook: str) -> torch.Tensor:
        if hook not in self.values:
            raise KeyError(f"no hook '{hook}' here; have {list(self.values)}")
        return self.values[hook]

    def __contains__(self, hook: str) -> bool:
        return hook in self.values

    @property
    def hooks(self) -> list[str]:
        return list(self.values)

    def text(self, hook: str, i: int) -> torch.Tensor:
        """Per-token mode: the (n_tokens_i, d) block of text i."""
        if self.offsets is None:
            raise ValueError("text() needs per-token activations (pooling='all')")
        return self.values[hook][int(self.offsets[i]):int(self.offsets[i + 1])]

    def to_arrow(self, first_text: int = 0, fields: dict[str, list] | None = None) -> pa.Table:
        """The run-shard schema: text_id, the input's fields (default: those
        in metadata["fields"]), n_tokens and one
        fixed_size_list<float32>[d] column per hook (per token: text_id,
        position, token_id, token and the hooks)."""
        columns = self.row_columns(first_text)
        fields = self.metadata.get("fields", {}) if fields is None else fields
        if not self.per_token:
            n_tokens = columns.pop("n_tokens")
            columns.update({role: pa.array(values) for role, values in fields.items()})
            columns["n_tokens"] = n_tokens
        for hook, values in self.values.items():
            columns[hook] = vector_column(values.numpy())
        return pa.table(columns)

    def summary_rows(self) -> list[tuple[str, str]]:
        shapes = ", ".join(f"{hook} {tuple(v.shape)}" for hook, v in self.values.items())
        return super().summary_rows() + [("hooks", shapes)]
