"""Errors of the validate stage, importable without loading Great Expectations."""


class ValidationFailed(RuntimeError):
    """The data failed a stage-level threshold; the message names the threshold and the figure."""
