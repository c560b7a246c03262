"""A name -> implementation map that refuses duplicates: run kinds, judge
kinds, SAE architectures and normalisations, trait-vector methods and
detectors are registries, extended by registering, not by `if kind == ...`."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import ActlabError

T = TypeVar("T")


def one_of(what: str, name, choices, param: str | None = None, hint: str = "") -> None:
    """Refuse `name` unless it is one of `choices`, in one line naming them:
    the one "unknown X; use a, b, c" error (Registry.pick, dtypes, matmul paths)."""
    if name not in choices:
        raise ActlabError(f"unknown {what} '{name}'; use {', '.join(choices)}{hint}", param=param)


class Registry(dict, Generic[T]):
    """`what` names the registry in messages; `order` sorts its names for
    them (default: alphabetical); `hint` follows the names in an unknown
    name's error."""

    def __init__(self, what: str, order: Callable[[str, T], object] | None = None, hint: str = ""):
        super().__init__()
        self.what = what  # "run kind", for messages
        self.order = order or (lambda name, value: name)
        self.hint = hint

    def register(self, name: str, value: T) -> T:
        if name in self:
            raise ValueError(f"{self.what} '{name}' is already registered")
        self[name] = value
        return value

    def names(self) -> list[str]:
        """The registered names, in `order`."""
        return sorted(self, key=lambda name: self.order(name, self[name]))

    def pick(self, name: str, param: str | None = None) -> T:
        """The implementation registered as `name`, or a one-line error naming the known ones."""
        one_of(self.what, name, self.names(), param, self.hint)
        return self[name]
