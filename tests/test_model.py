from __future__ import annotations


import numpy as np
import pytest
import soundfile as sf
import torch

from polyvox.config import load_params
from polyvox.features.extract import compute_features
from polyvox.models.acoustic import AcousticModel, Batch, ModelConfig
from polyvox.models.encoders import ConditioningFusion, ImageEncoder, ReferenceEncoder, TextEncoder
from polyvox.models.symbols import Vocabulary, tokenize
from polyvox.models.variance import EDGE_FRAMES, phone_positions, regulate_length, token_average
from polyvox.text.normalize import normalize_text
from polyvox.text.phonemes import phonemize

import corpora
from conftest import REPO


def tiny_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, n_mels=80, channels=64, text_layers=2, decoder_layers=2, heads=2,
                       kernel_size=3, variance_kernel_size=3, postnet_layers=3, dropout=0.0, modality_dropout=0.3,
                       contrastive_temperature=0.1, alignment_prior=0.0)


@pytest.fixture(scope="module")
def real_batch(kathleen, kathleen_files):
    """Two real Kathleen takes as a training batch (features computed here, a second or two)."""
    cfg = load_params(REPO / "params.yaml").audio
    texts = corpora.kathleen_texts(kathleen)
    files = [kathleen_files[0], kathleen_files[3]]
    phones, _ = phonemize([normalize_text(texts[f.stem]) for f in files], "en-us", "espeak")
    vocab = Vocabulary.build(phones)
    feats = []
    for path in files:
        signal, rate = sf.read(path, dtype="float32")
        import librosa

        feats.append(compute_features(librosa.resample(signal, orig_sr=rate, target_sr=cfg.sample_rate), cfg))
    frames = max(f["mel"].shape[1] for f in feats)
    tokens = [vocab.encode(p) for p in phones]
    pad = lambda a, n, v=0.0: np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, n - a.shape[-1])], constant_values=v)  # noqa: E731
    mel = torch.tensor(np.stack([pad(f["mel"], frames, np.log(1e-5)) for f in feats]))
    f0 = np.stack([pad(f["f0"], frames) for f in feats])
    voiced = f0 > 0
    log_f0 = np.where(voiced, np.log(np.maximum(f0, 1)), 0)
    pitch = np.where(voiced, (log_f0 - log_f0[voiced].mean()) / log_f0[voiced].std(), 0)
    energy = np.stack([pad(f["energy"], frames) for f in feats])
    batch = Batch(
        tokens=torch.tensor([t + [0] * (max(map(len, tokens)) - len(t)) for t in tokens]),
        token_lengths=torch.tensor([len(t) for t in tokens]),
        mel=mel, mel_lengths=torch.tensor([f["mel"].shape[1] for f in feats]),
        pitch=torch.tensor(pitch, dtype=torch.float32), voiced=torch.tensor(voiced, dtype=torch.float32),
        energy=torch.tensor((energy - energy.mean()) / energy.std(), dtype=torch.float32),
        speaker=torch.tensor([0, 1]),
        reference_mel=mel.clone(), reference_lengths=torch.tensor([f["mel"].shape[1] for f in feats]),
        image=torch.rand(2, 3, 64, 64), image_present=torch.tensor([True, False]),
    )
    mel_mean = mel.mean(dim=(0, 2))
    mel_std = mel.std(dim=(0, 2)).clamp(min=0.1)
    return batch, vocab, mel_mean, mel_std


def test_tokenize_splits_punctuation():
    assert tokenize("h ə l ˈoʊ, | w ˈɜː l d.") == ["h", "ə", "l", "ˈoʊ", ",", "|", "w", "ˈɜː", "l", "d", "."]
    vocab = Vocabulary.build(["a b | c."])
    assert vocab.encode("a b | c. zz") == [vocab.index["a"], vocab.index["b"], vocab.index["|"], vocab.index["c"],
                                           vocab.index["."], 1]


def test_module_shapes():
    tokens, lengths = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]]), torch.tensor([3, 2])
    hidden, mu, mask = TextEncoder(10, 32, 1, 2, 3, 0.0, 80)(tokens, lengths)
    assert hidden.shape == (2, 4, 32) and mu.shape == (2, 4, 80) and mask.tolist()[1] == [True, True, False, False]
    assert ReferenceEncoder(80, 32, 0.0)(torch.randn(2, 80, 50), torch.tensor([50, 20])).shape == (2, 32)
    assert ImageEncoder(32, 0.0)(torch.rand(2, 3, 64, 64)).shape == (2, 32)
    fusion = ConditioningFusion(32, 0.0).eval()
    none = fusion(None, None, None, None, 2)
    assert none.shape == (2, 32) and torch.allclose(none[0], none[1])
    expanded = regulate_length(torch.arange(6.0).reshape(1, 3, 2), torch.tensor([[2, 0, 3]]))
    assert expanded[0, :, 0].tolist() == [0, 0, 4, 4, 4]
    alignment = torch.tensor([[[1.0, 1, 0], [0, 0, 1]]])
    assert token_average(torch.tensor([[1.0, 3, 5]]), alignment).tolist() == [[2.0, 5.0]]


def test_phone_positions_place_each_frame_in_its_token():
    durations = torch.tensor([[2, 0, 3], [1, 1, 0]])
    places = phone_positions(durations, 6)
    assert places.shape == (2, 6, 6)
    # relative position inside the token, mapped to [-1, 1]: frame centres at 1/4, 3/4 and 1/6, 1/2, 5/6
    assert torch.allclose(places[0, :5, 0], torch.tensor([-0.5, 0.5, -2 / 3, 0.0, 2 / 3]))
    assert torch.allclose(places[0, :5, 3] * EDGE_FRAMES, torch.tensor([0.0, 1, 0, 1, 2]))  # frames since start
    assert torch.allclose(places[0, :5, 4] * EDGE_FRAMES, torch.tensor([1.0, 0, 2, 1, 0]))  # frames until end
    assert torch.allclose(places[1, :2, 5], torch.log1p(torch.tensor([1.0, 1.0])) / 4)  # the token's log length
    assert not places[0, 5:].any() and not places[1, 2:].any()  # nothing past each sequence's end


def test_token_dropout_regularises_the_token_level_modules_only():
    from torch import nn

    def rates(module):
        return {m.p for m in module.modules() if isinstance(m, nn.Dropout)}

    model = AcousticModel(tiny_config(20).model_copy(update={"dropout": 0.0, "token_dropout": 0.2}), torch.zeros(80), torch.ones(80))
    assert rates(model.text) == rates(model.variance) == {0.2}
    assert rates(model.decoder) == rates(model.reference) == {0.0}
    same = AcousticModel(tiny_config(20).model_copy(update={"dropout": 0.1}), torch.zeros(80), torch.ones(80))  # None: as dropout
    assert rates(same.text) == rates(same.variance) == rates(same.decoder) == {0.1}
    # in training mode it changes the token states; in eval mode synthesis is deterministic
    tokens, lengths = torch.tensor([[3, 4, 5, 6]]), torch.tensor([4])
    model.train()
    assert not torch.allclose(model.text(tokens, lengths)[0], model.text(tokens, lengths)[0])
    model.eval()
    assert torch.equal(model.text(tokens, lengths)[0], model.text(tokens, lengths)[0])


def test_tiny_model_overfits_one_batch(real_batch):
    batch, vocab, mel_mean, mel_std = real_batch
    torch.manual_seed(0)
    model = AcousticModel(tiny_config(len(vocab)), mel_mean, mel_std)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(150):
        losses = model(batch)
        optimiser.zero_grad()
        losses["total"].backward()
        optimiser.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert last["mel"] < first["mel"] / 3, (first, last)  # the decoder learns these two mels
    assert last["total"] < first["total"] / 3
    assert last["duration"] < first["duration"]


def test_every_conditioning_subset_synthesises(real_batch):
    batch, vocab, mel_mean, mel_std = real_batch
    model = AcousticModel(tiny_config(len(vocab)), mel_mean, mel_std).eval()
    tokens = batch.tokens[:1]
    reference = (batch.reference_mel[:1], batch.reference_lengths[:1])
    image = batch.image[:1]
    outputs = {
        "text": model.infer(tokens),
        "text+audio": model.infer(tokens, *reference),
        "text+image": model.infer(tokens, image=image),
        "all": model.infer(tokens, *reference, image=image),
    }
    for name, (mel, lengths) in outputs.items():
        assert mel.shape[:2] == (1, 80) and mel.shape[2] == int(lengths[0]) >= int(batch.token_lengths[0]), name
        assert torch.isfinite(mel).all(), name
    assert not torch.allclose(outputs["text"][0][..., :5], outputs["text+image"][0][..., :5])


def test_griffin_lim_inverts_the_feature_analysis(kathleen_files):
    import librosa

    from polyvox.signal.griffin_lim import griffin_lim

    cfg = load_params(REPO / "params.yaml").audio
    signal, rate = sf.read(kathleen_files[2], dtype="float32")
    signal = librosa.resample(signal, orig_sr=rate, target_sr=cfg.sample_rate)
    mel = compute_features(signal, cfg)["mel"]
    wave = griffin_lim(torch.tensor(mel), cfg).numpy()
    assert abs(wave.size - signal.size) < cfg.hop_length * 2
    again = compute_features(wave, cfg)["mel"]
    frames = min(mel.shape[1], again.shape[1])
    # Same spectral envelope back (log-mel L1 about 0.1 measured), far from another take's.
    assert np.abs(again[:, :frames] - mel[:, :frames]).mean() < 0.25


def test_a_runaway_duration_is_capped():
    from polyvox.models.acoustic import MAX_TOKEN_FRAMES

    log_durations = torch.tensor([[0.5, 40.0, float("inf")]])  # e^40 frames: a broken prediction
    durations = AcousticModel.durations(log_durations, torch.ones(1, 3))
    assert durations.tolist() == [[1.0, MAX_TOKEN_FRAMES, MAX_TOKEN_FRAMES]]
