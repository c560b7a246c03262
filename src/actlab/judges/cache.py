"""Saved judgements, so that asking a judge or an explainer resumes: the one
cache behind trait judging (`traits.judging`) and latent explanation
(`latents.explain`).

    RUN/judgements/<key>/               key: the fingerprint of whoever was asked and the caller's settings
        settings.json                   what the key stands for, readably (never a secret)
        <part>-NNNNN.parquet            the parts of one save, NNNNN counting saves; the marker part,
                                        written last, says the save is whole

The invariant: a save's parts are written atomically, the marker last, so a
save whose marker exists is complete, and a save cut short is overwritten by
the next one (it takes the number after the last marker's). Readers see
complete saves only.
What was saved is reused only under the same key; a save holds nothing a
judge could not be asked for (callers save answers, never failures).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from ..runs.atomic import write_json_atomic, write_parquet_atomic
from ..storage import RunPath, read_parquet

JUDGEMENTS = "judgements"


@dataclass
class JudgementCache:
    folder: RunPath  # RUN/judgements/<key>
    marker: str  # the part written last in each save

    @classmethod
    def of(cls, run: RunPath, key: str, marker: str) -> "JudgementCache":
        return cls(run / JUDGEMENTS / key, marker)

    def read(self, part: str, columns: list[str] | None = None) -> pa.Table | None:
        """Every complete save's `part`, in save order; None before the first save."""
        complete = set(self._numbers(self.marker))
        files = [f for n, f in self._numbers(part).items() if n in complete]
        if not files:
            return None
        return pa.concat_tables([read_parquet(f, columns=columns) for f in files])

    def save(self, parts: dict[str, pa.Table]) -> None:
        """One save: each of `parts` (the marker among them) under the number
        after the last complete save's, the marker written last."""
        index = max(self._numbers(self.marker), default=-1) + 1
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in sorted(parts, key=lambda name: name == self.marker):
            write_parquet_atomic(self.folder / f"{name}-{index:05d}.parquet", parts[name])

    def record_settings(self, settings: dict) -> None:
        """settings.json, written once."""
        if not (self.folder / "settings.json").exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.folder / "settings.json", settings)

    def _numbers(self, part: str) -> dict:
        """{save number: file} of `part`, in number order."""
        if not self.folder.is_dir():
            return {}
        files = {int(f.name[len(part) + 1:-len(".parquet")]): f for f in self.folder.glob(f"{part}-*.parquet")
                 if f.name[len(part) + 1:-len(".parquet")].isdigit()}
        return dict(sorted(files.items()))
