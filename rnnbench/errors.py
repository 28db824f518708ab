"""User-facing errors.

A ``ConfigError`` means the user asked for something impossible or malformed. The
CLI prints its message alone (no traceback) and exits with status 2, before any
training starts. Messages say what was wrong, the value seen, and how to fix it.
"""


class RnnbenchError(Exception):
    """Base class of every error rnnbench raises on purpose."""


class ConfigError(RnnbenchError, ValueError):
    """Bad configuration or input: reported as a one-paragraph message, no traceback."""


class RegistryError(ConfigError, KeyError):
    """Unknown, duplicate or broken registry entry (cell or task)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(ConfigError):
    """A checkpoint to resume from or test on is missing, truncated, corrupt, or holds
    more than tensors and plain values (it is never unpickled as arbitrary objects)."""


class DivergedError(RnnbenchError, FloatingPointError):
    """The training loss became NaN or infinite; the run is recorded as ``diverged``."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}")
        self.step = step
        self.value = value


def is_int(value) -> bool:
    """An integer that is not a bool (``True`` is an ``int`` in Python, not a valid size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float that is not a bool (YAML ``true`` is no number of steps or rate)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check(condition: bool, key: str, value, expected: str) -> None:
    """Raise a ConfigError ``key=value: expected`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}.")
