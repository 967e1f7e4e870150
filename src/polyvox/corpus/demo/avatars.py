"""Avatar images whose look is computed from the voice, so an image encoder has something to learn.

Each teacher voice is measured from its own synthesised audio (:func:`measure_voice`) and the
measurements are drawn into a portrait (:func:`draw_avatar`):

=====================  ===========================================================
visual attribute       voice attribute
=====================  ===========================================================
background hue         median F0 (log scale: 80 Hz deep blue ... 250 Hz orange)
face width             median F0 (a lower voice gets a broader face)
hair length            declared gender of the teacher voice (long: female)
shirt colour           declared accent (US navy, Scottish green, British crimson)
mouth width            speaking rate (letters per second of audio)
eyebrow arch           F0 spread (inter-quartile range in semitones: livelier = higher)
background stripes     spectral brightness (median spectral centroid)
=====================  ===========================================================

Skin tone, eye and hair colour are drawn from a seed of the speaker name: they only make
speakers tell apart and carry no voice information.
"""

from __future__ import annotations

import colorsys
import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from polyvox.engines import CatalogVoice

ACCENT_COLOURS = {"us": (32, 52, 110), "scottish": (30, 110, 60), "british": (150, 25, 45)}


@dataclass(frozen=True)
class VoiceProfile:
    median_f0_hz: float
    f0_iqr_semitones: float
    speaking_rate: float  # letters per second of audio
    spectral_centroid_hz: float


def f0_track(signal: np.ndarray, sample_rate: int, fmin: float = 60.0, fmax: float = 400.0) -> np.ndarray:
    """F0 (Hz) of voiced frames by normalised autocorrelation; 40 ms frames, 10 ms hop.

    A small, dependency-free tracker: good enough for a voice's median pitch, not for prosody.
    """
    frame, hop = int(0.04 * sample_rate), int(0.01 * sample_rate)
    if signal.size < frame:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(signal, frame)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = rms > 0.1 * np.percentile(rms, 95)
    frames = frames[loud] * np.hanning(frame)
    if frames.size == 0:
        return np.zeros(0)
    spectrum = np.fft.rfft(frames, n=2 * frame, axis=1)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :frame]
    autocorr = autocorr / np.maximum(autocorr[:, :1], 1e-12)
    lo, hi = int(sample_rate / fmax), min(int(sample_rate / fmin), frame - 2)
    window = autocorr[:, lo:hi]
    # The first local maximum within 10 % of the best one: picking the global maximum alone
    # often lands on twice the period (an octave too low).
    local_max = np.zeros_like(window, dtype=bool)
    local_max[:, 1:-1] = (window[:, 1:-1] >= window[:, :-2]) & (window[:, 1:-1] >= window[:, 2:])
    candidates = local_max & (window >= 0.9 * window.max(axis=1, keepdims=True))
    candidates[~candidates.any(axis=1), :] = True
    lags = lo + np.argmax(candidates, axis=1)
    peaks = autocorr[np.arange(len(lags)), lags]
    voiced = peaks > 0.45
    # Parabolic interpolation around the peak for sub-sample lag precision.
    left = autocorr[np.arange(len(lags)), lags - 1]
    right = autocorr[np.arange(len(lags)), lags + 1]
    denominator = left - 2 * peaks + right
    shift = np.where(np.abs(denominator) > 1e-12, 0.5 * (left - right) / np.where(denominator == 0, 1, denominator), 0.0)
    f0 = sample_rate / (lags + np.clip(shift, -0.5, 0.5))
    return f0[voiced & (f0 >= fmin) & (f0 <= fmax)]


def measure_voice(wavs: list[Path], texts: list[str]) -> VoiceProfile:
    f0s, centroids = [], []
    letters, seconds = 0, 0.0
    for wav, text in zip(wavs, texts):
        signal, rate = sf.read(str(wav), dtype="float64", always_2d=True)
        mono = signal.mean(axis=1)
        f0s.append(f0_track(mono, rate))
        spectrum = np.abs(np.fft.rfft(mono[: rate * 10]))
        freqs = np.fft.rfftfreq(min(mono.size, rate * 10), 1 / rate)
        centroids.append(float((spectrum * freqs).sum() / max(spectrum.sum(), 1e-12)))
        letters += sum(ch.isalpha() for ch in text)
        seconds += mono.size / rate
    f0 = np.concatenate(f0s) if f0s else np.zeros(0)
    if f0.size == 0:
        raise ValueError(f"no voiced frames found in {len(wavs)} files starting with {wavs[0] if wavs else '-'}")
    semitones = 12 * np.log2(f0)
    q75, q25 = np.percentile(semitones, [75, 25])
    return VoiceProfile(
        median_f0_hz=round(float(np.median(f0)), 2),
        f0_iqr_semitones=round(float(q75 - q25), 3),
        speaking_rate=round(letters / max(seconds, 1e-9), 3),
        spectral_centroid_hz=round(float(np.median(centroids)), 1),
    )


def _unit(value: float, lo: float, hi: float) -> float:
    return min(1.0, max(0.0, (value - lo) / (hi - lo)))


def draw_avatar(voice: CatalogVoice, profile: VoiceProfile, size: int) -> bytes:
    """A PNG portrait (``size`` x ``size``) encoding ``profile`` as the module docstring lists."""
    rng = np.random.default_rng(zlib.crc32(voice.name.encode()))
    scale = 4  # draw large, then downsample: smooth edges without antialiasing primitives
    side = size * scale
    pitch = _unit(math.log(profile.median_f0_hz), math.log(80), math.log(250))
    hue = 0.62 - 0.55 * pitch
    background = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.55, 0.9))
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)

    stripes = 2 + round(6 * _unit(profile.spectral_centroid_hz, 500, 2500))
    stripe_colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.35, 1.0))
    for k in range(stripes):
        y = int(side * (k + 0.5) / stripes)
        draw.line([(0, y), (side, y)], fill=stripe_colour, width=max(1, side // 64))

    skin = tuple(int(v) for v in rng.uniform([150, 100, 80], [240, 200, 170]))
    hair = tuple(int(v) for v in rng.uniform([20, 10, 0], [160, 110, 70]))
    eyes = tuple(int(v) for v in rng.uniform([20, 40, 40], [90, 140, 160]))
    cx = side / 2
    face_half_width = side * (0.25 - 0.07 * pitch)
    face_top, face_bottom = side * 0.24, side * 0.74

    if voice.gender == "female":  # long hair behind the face
        draw.rounded_rectangle(
            [cx - face_half_width * 1.35, face_top - side * 0.06, cx + face_half_width * 1.35, side * 0.88],
            radius=side // 6, fill=hair,
        )
    shirt = ACCENT_COLOURS[voice.accent]
    draw.ellipse([cx - side * 0.42, side * 0.78, cx + side * 0.42, side * 1.3], fill=shirt)
    draw.rectangle([cx - side * 0.07, side * 0.68, cx + side * 0.07, side * 0.82], fill=skin)
    draw.ellipse([cx - face_half_width, face_top, cx + face_half_width, face_bottom], fill=skin)
    if voice.gender == "male":  # short hair on top
        draw.chord(
            [cx - face_half_width * 1.02, face_top - side * 0.05, cx + face_half_width * 1.02, face_top + side * 0.2],
            180, 360, fill=hair,
        )
    else:
        draw.chord(
            [cx - face_half_width * 1.05, face_top - side * 0.04, cx + face_half_width * 1.05, face_top + side * 0.16],
            180, 360, fill=hair,
        )

    eye_y, eye_dx, eye_r = side * 0.45, face_half_width * 0.42, side * 0.03
    arch = side * (0.015 + 0.05 * _unit(profile.f0_iqr_semitones, 1.0, 6.0))
    for sign in (-1, 1):
        ex = cx + sign * eye_dx
        draw.ellipse([ex - eye_r * 1.4, eye_y - eye_r, ex + eye_r * 1.4, eye_y + eye_r], fill=(250, 250, 250))
        draw.ellipse([ex - eye_r * 0.7, eye_y - eye_r * 0.7, ex + eye_r * 0.7, eye_y + eye_r * 0.7], fill=eyes)
        brow_y = eye_y - eye_r * 1.8
        draw.line(
            [(ex - eye_r * 1.6, brow_y), (ex, brow_y - arch), (ex + eye_r * 1.6, brow_y)],
            fill=hair, width=max(2, side // 60), joint="curve",
        )
    mouth_half = face_half_width * (0.2 + 0.45 * _unit(profile.speaking_rate, 8.0, 18.0))
    mouth_y = side * 0.62
    draw.arc([cx - mouth_half, mouth_y - side * 0.04, cx + mouth_half, mouth_y + side * 0.03], 10, 170,
             fill=(150, 40, 50), width=max(2, side // 50))

    out = io.BytesIO()
    image.resize((size, size), Image.Resampling.LANCZOS).save(out, format="PNG", optimize=False)
    return out.getvalue()
