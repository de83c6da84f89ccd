"""The one error type that the CLI turns into exit status 2."""


class UserError(ValueError):
    """Bad input from a user: names the bad field (or file) and says what is wrong."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = " ".join(message.split())  # one line, whatever a library's text says (torchvision's has several)
        super().__init__(f"{field}: {self.message}")


def env_number(name: str, kind: type = int) -> int | float | None:
    """The number in environment variable ``name`` (None where unset or empty), at least 0; anything
    else is a UserError naming the variable."""
    import math
    import os
    v = os.environ.get(name, "")
    if not v.strip():
        return None
    try:
        n = int(v) if kind is int else float(v)
    except ValueError:
        n = -1
    if not 0 <= n < math.inf:  # NaN and inf too
        raise UserError(name, f"{v!r} is not a {'whole ' * (kind is int)}number >= 0")
    return n


NUMERIC_ENV = {"LDTUNE_THREADS": int,  # torch threads; 0 or unset: every core
               "LDTUNE_CACHE_DEVICE_BYTES": float,  # bytes the feature cache may hold on the device
               "LDTUNE_CACHE_HOST_BYTES": float}  # bytes in pinned host memory (CUDA)


def check_env() -> None:
    """Every numeric LDTUNE_* variable, read once up front so a bad one is an error before any work."""
    for name, kind in NUMERIC_ENV.items():
        env_number(name, kind)
