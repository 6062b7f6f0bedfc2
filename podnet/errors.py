"""The root of podnet's typed errors.

Every error podnet raises on purpose derives from PodnetError and carries a
message a person can act on; `hint` says what to do about it.
"""


class PodnetError(Exception):
    """Base class of podnet's own errors."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message
