"""The one error type for a manifest that cannot be used (shared by its readers)."""


class ManifestError(RuntimeError):
    """The batch's manifest cannot be read or is invalid; the message says why."""
