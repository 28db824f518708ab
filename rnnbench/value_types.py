"""Types of config values: words for them, a check that a YAML/CLI value has one, and
the check of a plugin's options against its constructor signature.

Values arrive from YAML and the command line, so ``int`` accepts integers only
(not ``True``), ``float`` accepts any real number, and a string such as ``"abc"``
where a number is expected is refused with ``key=value is invalid: expected <type>.``
rather than deep inside torch. The config groups the core owns are described in
:mod:`rnnbench.config`; cells and tasks are plugins whose schema *is* their
constructor (``inspect.signature`` and the type hints of ``__init__``), so a cell
or task added later is covered without touching the core.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Literal, Union

from .errors import ConfigError, is_int, is_number


def describe(annotation: Any) -> str:
    """Words for a type, as used in error messages: ``an integer``, ``null or a number`` ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if annotation in (dict, typing.Any) or annotation is inspect.Parameter.empty:
        return "a mapping" if annotation is dict else "anything"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is Union:
        options = [a for a in args if a is not type(None)]
        words = " or ".join(describe(a) for a in options)
        return f"null or {words}" if len(options) < len(args) else words
    if origin in (list, tuple, typing.Sequence):
        inner = describe(args[0]) if args else "anything"
        return f"a list (each {inner})"
    return getattr(annotation, "__name__", str(annotation))


def matches(value: Any, annotation: Any) -> bool:
    """True if a YAML/CLI value has the type ``annotation`` (unknown annotations accept anything)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return True
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return is_int(value)
    if annotation is float:
        return is_number(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is Union:
        return any(matches(value, a) for a in args)
    if origin in (list, tuple, typing.Sequence):
        return isinstance(value, (list, tuple)) and (not args or all(matches(v, args[0]) for v in value))
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # a type we cannot check (a forward reference, a Protocol ...)


def check_type(key: str, value: Any, annotation: Any) -> None:
    """Raise ``ConfigError`` ``key=value is invalid: expected <type>`` unless ``value`` has the type."""
    if not matches(value, annotation):
        raise ConfigError(f"{key}={value!r} is invalid: expected {describe(annotation)}.")


def check_signature(cls: type, values: dict, skip: tuple[str, ...], prefix: str, what: str) -> None:
    """Unknown keys and wrong types of a cell or task, from ``cls.__init__``'s signature and hints.

    ``skip`` names constructor parameters the framework fills in itself (``input_size``).
    """
    signature = inspect.signature(cls.__init__)
    params = {name: p for name, p in signature.parameters.items() if name not in ("self", *skip)
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [k for k in values if k not in params]
    if unknown and not takes_any:
        raise ConfigError(f"{what} has no option {', '.join(repr(k) for k in unknown)}. "
                          f"Its options are: {', '.join(params) or '(none)'}.")
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # hints naming types a plugin does not import at runtime: check what we can
        hints = {}
    for key, value in values.items():
        if key in params and key in hints:
            check_type(f"{prefix}.{key}", value, hints[key])
