"""Typed schemas of the config: every key, its type, and a type check that names
key, value and the accepted type.

Two sources of types, one checker (:func:`check_type`):

- the groups the core owns (``trainer``, ``optim``, ``model`` and the top-level
  keys) are dataclasses here, so unknown keys and wrong types are refused before
  anything is built;
- cells and tasks are plugins: their schema *is* their constructor, so the
  accepted keys and types come from ``inspect.signature`` and the type hints of
  ``__init__``. A cell or task added later (built-in or third-party) is covered
  without touching this file. Range checks (``seq_len >= 2`` ...) stay in the
  constructors, next to the code that relies on them.

Values arrive from YAML and the command line, so ``int`` accepts integers only
(not ``True``), ``float`` accepts any real number, and a string such as ``"abc"``
where a number is expected is refused here rather than deep inside torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from .errors import ConfigError, is_int, is_number

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
# The strategies rnnbench launches itself (see rnnbench.distributed); Lightning's
# own ddp_spawn / subprocess launchers would re-run the whole command line.
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


@dataclass
class TrainerConfig:
    """``conf/trainer/*.yaml``: Lightning's loop and hardware settings (every key required;
    the defaults and the reasons for them are in ``conf/trainer/cpu.yaml``)."""

    accelerator: Literal[ACCELERATORS]
    devices: Union[int, Literal["auto"]]
    strategy: Literal[STRATEGIES]
    num_nodes: int
    precision: Union[Literal[PRECISIONS], Literal[16, 32, 64]]
    max_steps: int
    max_time: Optional[str]
    val_check_interval: int
    log_every_n_steps: int
    progress_bar: Literal["rich", "tqdm", "none"]
    stop_when_solved: bool
    deterministic: bool
    threads: Optional[int]
    checkpoint: bool


@dataclass
class OptimConfig:
    """``conf/optim/*.yaml``: the optimiser and its schedule."""

    name: Literal["adam", "rmsprop", "sgd"]
    lr: float
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    alpha: float = 0.99
    momentum: float = 0.0
    grad_clip: Optional[float] = None
    schedule: Literal["constant", "cosine", "step", "plateau"] = "constant"
    warmup_steps: int = 0
    step_size: int = 1000
    first_decay_step: Optional[int] = None
    gamma: float = 0.1
    patience: int = 0


@dataclass
class ModelConfig:
    """``model:`` in ``conf/config.yaml``: how the model is sized."""

    param_budget: Optional[int] = None


@dataclass
class RunConfig:
    """The top-level keys of ``conf/config.yaml`` (groups are checked by their own schema)."""

    cell: dict
    task: dict
    trainer: dict
    optim: dict
    seed: int
    data_seed: int
    init_seed: int
    model: dict = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)
    results_dir: str = "results"
    resume: bool = True
    force: bool = False
    diagnostics: bool = False


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


def check_dataclass(values: dict, schema: type, prefix: str) -> None:
    """Missing keys, unknown keys and wrong types of one config group described by a dataclass."""
    hints = typing.get_type_hints(schema)
    required = [f.name for f in dataclasses.fields(schema)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in values]
    if missing:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"missing config key(s) {', '.join(where + k for k in missing)}; "
                          f"set them (e.g. {where}{missing[0]}=...) or restore them in your YAML.")
    unknown = sorted(set(values) - set(hints))
    if unknown:
        where = f"{prefix} key" if prefix else "top-level key"
        raise ConfigError(f"unknown {where}(s) {', '.join(unknown)}; known keys: {', '.join(sorted(hints))}. "
                          f"Check the spelling (`rnnbench --cfg job` shows the composed config).")
    for key, value in values.items():
        if key in hints:
            check_type(f"{prefix}.{key}" if prefix else key, value, hints[key])


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
