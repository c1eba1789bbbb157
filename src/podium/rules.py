"""Rules for typed settings, read as what they allow: `Int(min=1)`, `Float(gt=0)`,
`OneOf("F", "C")`, `Int(min=0) | "auto"`, `Float(gt=0) | None`, `ListOf(Int(min=1), length=2)`,
`MapOf(Float(ge=0), keys=(...))`, and `Open()` for a mapping whose keys are free. Each rule says
what it allows in words (`what`), for one-line messages: `key=value: expected an integer >= 1`.
The settings themselves, by key: podium.schema.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

__all__ = [
    "show",
    "Rule",
    "Exactly",
    "AnyOf",
    "Int",
    "Float",
    "Bool",
    "Str",
    "Path",
    "Text",
    "OneOf",
    "ListOf",
    "MapOf",
    "Open",
    "Unresolvable",
]


def show(value: Any) -> str:
    """A value as it is written on the command line (null, true, [0.9, 0.999], {bce: 1.0})."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return repr(value) if value == "" or "\n" in value else value
    return str(value)


def _either(texts: list[str]) -> str:
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


# -- rules ------------------------------------------------------------------------------------
class Rule:
    """What one setting allows: `accepts(value)` on its resolved plain value, `what` says it."""

    what = "a value"  # as in "expected an integer >= 1"
    plural = "values"  # as in "a list of integers >= 1"

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def problem(self, key: str, value: Any) -> str | None:
        """None if `value` is allowed, else the one-line message naming `key` and `value`."""
        return None if self.accepts(value) else f"{key}={show(value)}: expected {self.what}"

    def __or__(self, other: Rule | str | None) -> AnyOf:
        return AnyOf(self, other)

    def __ror__(self, other: Rule | str | None) -> AnyOf:
        return AnyOf(other, self)


class Exactly(Rule):
    """One literal value: `"auto"` or None (null) in `Int(min=0) | "auto"`."""

    def __init__(self, value: str | None):
        self.value = value
        self.what = self.plural = show(value)

    def accepts(self, value: Any) -> bool:
        return value is self.value if self.value is None else value == self.value


class AnyOf(Rule):
    """Any of several rules (written with `|`)."""

    def __init__(self, *rules: Rule | str | None):
        self.rules: list[Rule] = []
        for rule in rules:
            parts = rule.rules if isinstance(rule, AnyOf) else [rule]
            self.rules += [r if isinstance(r, Rule) else Exactly(r) for r in parts]
        self.what = _either([r.what for r in self.rules])
        self.plural = _either([r.plural for r in self.rules])

    def accepts(self, value: Any) -> bool:
        return any(rule.accepts(value) for rule in self.rules)


def _bounds(lower: tuple[str, Any], upper: tuple[str, Any]) -> str:
    """' >= 0', ' from 0 to 1', ' >= 0 and < 1', or '' for no bounds."""
    (lower_op, low), (upper_op, high) = lower, upper
    if low is not None and high is not None:
        if (lower_op, upper_op) == (">=", "<="):
            return f" from {low} to {high}"
        return f" {lower_op} {low} and {upper_op} {high}"
    if low is not None:
        return f" {lower_op} {low}"
    return f" {upper_op} {high}" if high is not None else ""


class Int(Rule):
    """An integer (not a boolean, not 3.0), optionally within [min, max]."""

    def __init__(self, min: int | None = None, max: int | None = None, what: str | None = None):
        self.min, self.max = min, max
        bounds = _bounds((">=", min), ("<=", max))
        self.what, self.plural = what or f"an integer{bounds}", f"integers{bounds}"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class Float(Rule):
    """A finite number (an integer is one too); `gt`/`ge` and `lt`/`le` bound it."""

    def __init__(
        self,
        gt: float | None = None,
        ge: float | None = None,
        lt: float | None = None,
        le: float | None = None,
    ):
        self.gt, self.ge, self.lt, self.le = gt, ge, lt, le
        lower = (">", gt) if gt is not None else (">=", ge)
        upper = ("<", lt) if lt is not None else ("<=", le)
        bounds = _bounds(lower, upper)
        self.what, self.plural = f"a number{bounds}", f"numbers{bounds}"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        return (
            math.isfinite(value)
            and (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )


class Bool(Rule):
    what, plural = "true or false", "booleans"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class Str(Rule):
    """A non-empty string: a name (encoder, architecture, slug)."""

    def __init__(self, what: str = "a name", plural: str = "names"):
        self.what, self.plural = what, plural

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value != ""


class Path(Str):
    """A file or folder (existence is the command's business: it says which one is missing)."""

    def __init__(self, what: str = "a path", plural: str = "paths"):
        super().__init__(what, plural)


class Text(Rule):
    """Free text, where `message=2` means the text "2": a string or a number."""

    what, plural = "a text", "texts"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str | int | float) and not isinstance(value, bool)


class OneOf(Rule):
    """One of fixed choices, of the same type (base: 1 is not base: true)."""

    def __init__(self, *choices: str | int):
        self.choices = choices
        names = [show(c) for c in choices]
        self.what = _either(names) if len(names) <= 2 else "one of " + ", ".join(names)
        self.plural = "values among " + ", ".join(names)

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(c) and value == c for c in self.choices)


class ListOf(Rule):
    """A list whose items all follow `item`; `length` fixes its length, `min_len` bounds it."""

    def __init__(self, item: Rule, length: int | None = None, min_len: int = 0, what: str = ""):
        self.item, self.length, self.min_len = item, length, min_len
        if length is not None:
            default = f"a list of {length} {item.plural}"
        else:
            default = f"a {'non-empty ' if min_len == 1 else ''}list of {item.plural}"
        self.what, self.plural = what or default, "lists"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, list) or len(value) < self.min_len:
            return False
        return (self.length is None or len(value) == self.length) and all(
            self.item.accepts(v) for v in value
        )


class MapOf(Rule):
    """A mapping of known names (`keys`) to values following `value`; a wrong entry is named."""

    def __init__(self, value: Rule, keys: tuple[str, ...]):
        self.value, self.keys = value, keys
        self.what = f"a mapping of {', '.join(keys)} to {value.plural}"
        self.plural = "mappings"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict) and all(
            k in self.keys and self.value.accepts(v) for k, v in value.items()
        )

    def problem(self, key: str, value: Any) -> str | None:
        if not isinstance(value, dict):
            return super().problem(key, value)
        for name, entry in value.items():
            if name not in self.keys:
                known = ", ".join(self.keys)
                return f"{key}.{name}={show(entry)}: unknown key; known: {known}"
            if not self.value.accepts(entry):
                return self.value.problem(f"{key}.{name}", entry)
        return None


class Open(Rule):
    """A mapping with free keys: its entries are not settings podium knows (model.kwargs)."""

    what, plural = "a mapping", "mappings"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)


class Unresolvable(Rule):
    """A value that cannot be read: a failing interpolation, or `???` never filled in."""

    def __init__(self, error: OmegaConfBaseException):
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        missing = isinstance(error, MissingMandatoryValue)
        self.reason = "no value given" if missing else f"cannot be resolved ({first_line})"

    def accepts(self, value: Any) -> bool:
        return False

    def problem(self, key: str, value: Any) -> str:
        return f"{key}={show(value)}: {self.reason}"
