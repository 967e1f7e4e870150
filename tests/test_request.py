"""The service's request parser, with no server: every way a client can get a request wrong is a
RequestError with the status and a message that names the field."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from polyvox.config import load_params
from polyvox.serve.request import RequestError, parse

from conftest import REPO


def _front_end(text: str):
    if not any(c.isalpha() for c in text):
        raise ValueError("nothing pronounceable")
    return np.ones((1, 3), dtype=np.int64)  # as Synthesizer.tokens: (1, tokens)


VOICE = SimpleNamespace(speakers=["alice", "bob"], takes_images=True,
                        members=[SimpleNamespace(synthesizer=SimpleNamespace(tokens=_front_end, image_size=16))])
SETTINGS = load_params(REPO / "params.yaml").serve


def _wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.sin(np.arange(int(seconds * rate)) / 5.0).astype("float32") * 0.3, rate, format="WAV")
    return buffer.getvalue()


def _png(size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_good_request_is_parsed_and_its_uploads_decoded():
    request = parse(VOICE, SETTINGS, "Hello there. How are you?", "bob", True, _wav(), _png())
    assert request.sentences == ["Hello there.", "How are you?"] and request.speaker == "bob" and request.stream
    signal, rate = request.reference
    assert rate == 16000 and signal.ndim == 1 and len(signal) == 8000
    assert request.picture.shape == (3, 16, 16) and request.picture.dtype == np.float32
    assert abs(float(request.picture[0].mean()) - 200 / 255) < 1e-3  # the training front-end's scaling
    assert not request.by_name_only and parse(VOICE, SETTINGS, "Hi.", "alice", False, None, None).by_name_only
    assert parse(VOICE, SETTINGS, "Hi.", "", False, None, None).speaker is None  # an empty field is no speaker


@pytest.mark.parametrize("fields, status, says", [
    (dict(text="x" * (SETTINGS.max_text_chars + 1)), 413, "limit"),
    (dict(text="   "), 422, "text is empty"),
    (dict(text="Hi.", length_scale=0.1), 422, "length_scale 0.1 is outside"),
    (dict(text="Fine. 123 456."), 422, "nothing pronounceable"),
    (dict(speaker="carol"), 422, "unknown speaker 'carol'"),
    (dict(reference_audio=b""), 422, "reference_audio upload is empty"),
    (dict(reference_audio=b"\0" * (int(SETTINGS.max_upload_mb * 2**20) + 1)), 413, "reference_audio upload is larger"),
    (dict(reference_audio=b"RIFF not a wave at all"), 415, "reference_audio is not audio"),
    (dict(reference_audio=_wav(seconds=0.01)), 422, "at least 0.1 s"),
    (dict(image=b"GIF89a broken"), 415, "image is not a picture"),
])
def test_a_bad_request_is_refused_with_a_reason(fields, status, says):
    request = dict(text="Hello there.", speaker=None, stream=False, reference_audio=None, image=None) | fields
    with pytest.raises(RequestError) as caught:
        parse(VOICE, SETTINGS, **request)
    assert caught.value.status == status and says in caught.value.detail, (caught.value.status, caught.value.detail)


def test_an_image_for_a_voice_without_images_is_refused():
    no_images = SimpleNamespace(**{**vars(VOICE), "takes_images": False})
    with pytest.raises(RequestError, match="takes no image") as caught:
        parse(no_images, SETTINGS, "Hello.", None, False, None, _png())
    assert caught.value.status == 422


@pytest.mark.parametrize("text, language, refused", [
    ("Привет, как дела?", "en-us", "'Привет,' (cyrillic letters)"),
    ("你好世界", "en-us", "'你好世界' (cjk letters)"),
    ("Hello, Привет.", "en-gb", "'Привет.'"),
    ("Café déjà vu, naïve Zoë.", "en-us", None),
    ("Привет, Anna.", "ru", None),  # a Russian voice reads Cyrillic, and Latin names
    ("Γειά σου", "ru", "greek"),
    ("1999, 3.5 % — ok?", "en-us", None),
])
def test_text_in_a_script_the_voice_cannot_read_is_refused_by_name(text, language, refused):
    """espeak under en-us reads Cyrillic as letter names and CJK as "Chinese letter" (issue 32 §2)."""
    from polyvox.text.scripts import UnreadableText, check_readable

    if refused is None:
        check_readable(text, language)
    else:
        with pytest.raises(UnreadableText, match="cannot read") as caught:
            check_readable(text, language)
        assert refused in str(caught.value)
