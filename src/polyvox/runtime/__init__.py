"""The inference runtime: what turns text into audio once a voice is trained.

:class:`~polyvox.runtime.voice.Voice` (members and a vocoder), the per-member
:class:`~polyvox.runtime.synthesizer.Synthesizer`, the serving bundle's format and loader, the ONNX
export and runtime, and the front-ends that prepare a request's inputs (text, reference audio,
image, teacher rendering). Evaluate, the registry, the service and the CLI all synthesise through
it; it imports nothing of the stages that train (the import-graph test holds it to that).
"""


class VoiceError(ValueError):
    """A voice folder that cannot be loaded, or members that cannot be combined."""
