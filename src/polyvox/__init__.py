"""polyvox: from a voice corpus to a deployed custom voice."""

__version__ = "0.1.0"
