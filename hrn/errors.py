"""The package's one error type. Every user-facing failure (a bad tree, file, label or setting) raises a subclass,
with a one-line message that names the file, key or value and says how to fix it; the commands print just that
line."""


class HRNError(ValueError):
    """Base of the package's user-facing errors."""
