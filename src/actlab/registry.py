"""A name -> implementation map that refuses duplicates: run kinds and judge
kinds are registries, extended by registering, not by `if kind == ...`."""

from __future__ import annotations

from typing import Generic, TypeVar

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
