"""Integration of trained members into one voice (``polyvox ensemble``)."""


class VoiceError(ValueError):
    """A voice folder that cannot be loaded, or members that cannot be combined."""
