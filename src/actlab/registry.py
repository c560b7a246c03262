"""A name -> implementation map that refuses duplicates: run kinds, judge
kinds, SAE architectures and normalisations, trait-vector methods and
detectors are registries, extended by registering, not by `if kind == ...`."""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import ActlabError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    def __init__(self, what: str):
        super().__init__()
        self.what = what  # "run kind", for messages

    def register(self, name: str, value: T) -> T:
        if name in self:
            raise ValueError(f"{self.what} '{name}' is already registered")
        self[name] = value
        return value

    def pick(self, name: str, param: str | None = None) -> T:
        """The implementation registered as `name`, or a one-line error naming the known ones."""
        if name not in self:
            raise ActlabError(f"unknown {self.what} '{name}'; use {', '.join(sorted(self))}", param=param)
        return self[name]
