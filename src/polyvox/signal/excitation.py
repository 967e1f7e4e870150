"""The source of a source-filter vocoder: F0 on the mel's frame grid → a harmonic excitation (a
band-limited pulse train that follows the contour) and a noise excitation, each as the STFT the
vocoder's iSTFT head shapes (:class:`polyvox.models.neural_vocoder.SourceFilterHead`).

As NSF (Wang et al., "Neural source-filter waveform models", 2019) and the NSF-HiFiGAN of RVC and
so-vits-svc do, the pitch is built into the excitation instead of being left for the network to
infer from the mel: the vocoder scales the harmonics it is given, so it cannot render another pitch.
Unlike them, the filter works in the STFT domain (Vocos's head), so the source is analysed with the
vocoder's own frames: frame ``t`` covers samples ``[t·hop − n_fft/2, t·hop + n_fft/2)`` of a source
that is generated past both ends (no padding, no reflection), and the frames overlap-add coherently
because they are cut from one continuous signal.

Scaled so that a gain of ``g`` gives a harmonic peak or a noise floor of STFT magnitude ``g`` (a
sinusoid of unit amplitude peaks at ``sum(window) / 2``, so the harmonic spectrum is divided by it).

Numpy, not torch: the source has no weights, so the trainer builds it beside the batch, and the
ONNX path (which has no torch) builds the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import functools

import numpy as np
import scipy.fft

# log-F0 enters the network as octaves from this pitch (0 where unvoiced, with a separate voiced flag)
PITCH_CENTRE_HZ = 150.0
# harmonics up to this share of the Nyquist frequency: the top one must not fold back
HARMONIC_CEILING = 0.9


@dataclass(frozen=True)
class Excitation:
    """What the source-filter vocoder reads beside the mel, for a batch of ``frames`` frames:
    ``pitch`` (batch, 2, frames) float32 (octaves from :data:`PITCH_CENTRE_HZ`, voiced flag);
    ``harmonic`` and ``noise`` (batch, n_fft // 2 + 1, frames) complex64 spectra."""

    pitch: np.ndarray
    harmonic: np.ndarray
    noise: np.ndarray


def pitch_features(f0: np.ndarray) -> np.ndarray:
    """(batch, frames) Hz, 0 where unvoiced → (batch, 2, frames) float32: octaves from
    :data:`PITCH_CENTRE_HZ` (0 where unvoiced) and the voiced flag."""
    voiced = f0 > 0
    octaves = np.where(voiced, np.log2(np.maximum(f0, 1.0) / PITCH_CENTRE_HZ), 0.0)
    return np.stack([octaves, voiced], axis=1).astype(np.float32)


def _filled(f0: np.ndarray) -> np.ndarray:
    """A contour with the unvoiced frames bridged (log-linearly between voiced neighbours, held
    at the ends) so the phase runs on through them; a row with no voiced frame gets the centre pitch."""
    out = np.empty(f0.shape, dtype=np.float64)
    frames = np.arange(f0.shape[1])
    for row, track in enumerate(f0):
        voiced = track > 0
        if voiced.any():
            out[row] = np.exp(np.interp(frames, frames[voiced], np.log(track[voiced].astype(np.float64))))
        else:
            out[row] = PITCH_CENTRE_HZ
    return out


def _pulse_train(phase: np.ndarray, harmonics: np.ndarray) -> np.ndarray:
    """sum_{k=1..K} cos(k·phase) in closed form (the Dirichlet kernel), K per sample; phase in [-π, π)."""
    half = np.sin(phase / 2.0)
    small = np.abs(half) < 1e-6
    dirichlet = np.sin((harmonics + 0.5) * phase) / (2.0 * np.where(small, 1.0, half)) - 0.5
    return np.where(small, harmonics, dirichlet)


def excitation(f0: np.ndarray, sample_rate: int, hop_length: int, n_fft: int, win_length: int,
               rng: np.random.Generator, phase: np.ndarray | None = None) -> Excitation:
    """The excitation of a (batch, frames) F0 track in Hz (0 where unvoiced). ``rng`` draws the noise;
    ``phase`` (batch,) is the pulse train's phase at frame 0 (0 when None)."""
    f0 = np.asarray(f0, dtype=np.float64)
    if f0.ndim != 2:
        raise ValueError(f"excitation: F0 must be (batch, frames), got shape {f0.shape}")
    batch, frames = f0.shape
    half = n_fft // 2
    # the signal runs from sample -n_fft/2 to frames·hop + n_fft/2: every frame's window is inside it
    positions = (np.arange(frames * hop_length + n_fft) - half) / hop_length  # in frames
    grid = np.arange(frames)
    filled = _filled(f0)
    hz = np.stack([np.interp(positions, grid, row) for row in filled])
    voicing = np.stack([np.interp(positions, grid, row) for row in (f0 > 0).astype(np.float64)])
    # the phase at sample n is the running sum of the instantaneous frequency (in cycles, float64),
    # anchored at frame 0; its fractional part is the wrapped phase
    cycles = np.cumsum(hz / sample_rate, axis=1)
    cycles -= cycles[:, half:half + 1]
    if phase is not None:
        cycles += np.asarray(phase, dtype=np.float64)[:, None] / (2.0 * np.pi)
    wrapped = (2.0 * np.pi * (cycles - np.rint(cycles))).astype(np.float32)
    # harmonics per frame (of the bridged contour), held over the samples nearest that frame
    per_frame = np.maximum(1.0, np.floor(HARMONIC_CEILING * sample_rate / 2.0 / filled)).astype(np.float32)
    harmonics = per_frame[:, np.clip(np.rint(positions).astype(np.int64), 0, frames - 1)]
    source = _pulse_train(wrapped, harmonics) * voicing.astype(np.float32)

    left = (n_fft - win_length) // 2
    window = np.zeros(n_fft)
    window[left:left + win_length] = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    framed = np.lib.stride_tricks.sliding_window_view(source, n_fft, axis=1)[:, ::hop_length][:, :frames]
    harmonic = scipy.fft.rfft(framed * (window / (window.sum() / 2.0)).astype(np.float32), axis=2)
    bank = _noise_bank(n_fft // 2 + 1)
    offsets = rng.integers(0, bank.shape[1], size=batch)
    noise = np.stack([np.take(bank, np.arange(start, start + frames), axis=1, mode="wrap") for start in offsets])
    return Excitation(pitch=pitch_features(f0), harmonic=harmonic.transpose(0, 2, 1).astype(np.complex64), noise=noise)


NOISE_FRAMES = 2048  # 24 s at 22.05 kHz and hop 256


@functools.lru_cache(maxsize=4)
def _noise_bank(bins: int) -> np.ndarray:
    """(bins, NOISE_FRAMES) complex64: an independent complex Gaussian per bin and frame, of unit RMS
    magnitude, drawn once per process from a fixed seed; each excitation reads a run of its frames from
    a drawn offset (wrapping round). Drawing the spectrum instead of framing a drawn signal: like every
    spectrum the head predicts it need not be the STFT of one signal, the iSTFT's overlap-add makes
    noise of it all the same; and reading a bank instead of drawing per call: the normal draws were
    the most expensive part of the excitation."""
    rng = np.random.default_rng(20261207)
    draws = rng.standard_normal((bins, NOISE_FRAMES, 2), dtype=np.float32) * np.float32(np.sqrt(0.5))
    bank = draws.view(np.complex64)[..., 0]
    bank.setflags(write=False)
    return bank
