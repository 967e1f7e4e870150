"""``polyvox <command>``: thin callers of the stage functions.

Every command takes ``--params FILE`` and any number of ``-S key.path=value`` overrides, reads
its knobs from there and nowhere else, and works in the current directory's ``data/``.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, Optional, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from polyvox.fingerprint import VOICE_FILE
from polyvox import dvcstate
from polyvox.config import DEFAULT_PARAMS_FILE, ConfigError, Params, load_params
from polyvox.engines import SynthesisError
from polyvox.corpus.schema import CorpusError
from polyvox.runtime import VoiceError
from polyvox.stages import STAGES
from polyvox.fileio import OutputNotWritten, recover_folder
from polyvox.lock import WorkspaceBusy, workspace_lock
from polyvox.parallel import WorkerCrashed
from polyvox.registry.store import RegistryError
from polyvox.tracking import TrackingUnavailable
from polyvox.validate.errors import ValidationFailed
from polyvox.workspace import Workspace

app = typer.Typer(
    name="polyvox",
    help="From a voice corpus to a deployed custom voice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
T = TypeVar("T")

ParamsOption = Annotated[Path, typer.Option("--params", help="Params file.", show_default=True)]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("-S", "--set", help="Override a param: -S key.path=value (repeatable), as `dvc exp run -S`."),
]


class PrefectUnavailable(RuntimeError):
    """PREFECT_API_URL names a Prefect server that does not answer."""


class MissingInput(RuntimeError):
    """A stage's input is not in the workspace: the stage that writes it has not run."""


# Errors a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, CorpusError, SynthesisError, ValidationFailed, VoiceError, RegistryError, WorkspaceBusy,
               TrackingUnavailable, PrefectUnavailable, OutputNotWritten, WorkerCrashed, MissingInput)


class RunNames(logging.Filter):
    """Prefect's run loggers say "Finished in state Completed()" and keep the task's or flow's name
    in an attribute that a message-only format drops: put it in front ("train-voice: Finished …")."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        if name and not getattr(record, "polyvox_named", False) and str(name) not in record.getMessage():
            record.msg, record.args, record.polyvox_named = f"{name}: {record.getMessage()}", (), True
        return True


def _setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=err, show_path=False)
    handler.addFilter(RunNames())
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[handler],
        force=True,
    )
    # Prefect's client logs every HTTP request at INFO; that is noise here.
    for noisy in ("httpx", "httpcore", "great_expectations", "distributed", "onnxscript", "onnx_ir", "torch.onnx",
                  "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(params: Path, overrides: list[str] | None) -> Params:
    return load_params(params, overrides or [])


@contextmanager
def user_errors(*also: type[Exception]) -> Iterator[None]:
    """End the command with the message of an error the user can fix (:data:`USER_ERRORS`, and
    ``also``): exit 2 for settings, 1 otherwise. Anything else is a bug and keeps its traceback."""
    try:
        yield
    except (*USER_ERRORS, *also) as exc:
        _fail(exc)


def _run_stage(command: str, stage: Callable[[Params, Workspace], T], params: Path, overrides: list[str] | None,
               dvc_stages: Callable[[Params], list[str]] | None = None) -> T:
    """Load params, run one stage function in the current directory, holding it (one writer per
    workspace) under ``command`` (``polyvox <stage> [--option]``: what the lock and the errors name);
    user errors exit cleanly. ``dvc_stages``: the dvc.yaml stages the run made, recorded in dvc.lock as
    ``dvc repro`` would (polyvox.dvcstate), and the champion with them after a promote or a rollback."""
    name = command.split()[1]
    with user_errors():
        try:
            loaded = _load(params, overrides)
            workspace = Workspace.here()
            with workspace_lock(workspace.root, command):  # first: the writer holding it may be making the input
                missing = missing_input(name, workspace)
                if missing:
                    raise MissingInput(f"{command.split(' --')[0]}: {missing}")
                result = stage(loaded, workspace)
                if dvc_stages is not None and dvcstate.why_not(workspace.root, params, overrides or []) is None:
                    dvcstate.record(workspace.root, dvc_stages(loaded),
                                    workspace.champion if name in ("promote", "rollback") else None)
                return result
        except FileNotFoundError as exc:  # an input the stage reads beyond its declared deps
            path = Path(exc.filename or str(exc.args[-1] if exc.args else ""))
            if not path.is_absolute() or Workspace.here().root not in path.parents:
                raise  # not the workspace's: a bug or the environment, keep the traceback
            raise MissingInput(f"{path}: missing; "
                               f"{_remedy(path.relative_to(Workspace.here().root).as_posix())}") from None


def producer(path: str) -> str | None:
    """The stage whose outputs hold ``path`` (a workspace path), if any."""
    for spec in STAGES.values():
        for out in spec.outs:
            if "${" not in out and (path == out or path.startswith(out + "/") or out.startswith(path + "/")):
                return spec.name
    return None


def _remedy(path: str) -> str:
    maker = producer(path)
    return (f"run `polyvox {maker}` first (or `polyvox run` for every stage)" if maker
            else "run `polyvox run` for every stage")


def missing_input(name: str, workspace: Workspace) -> str | None:
    """What stage ``name`` reads that the workspace lacks, and the command that makes it; None when
    its inputs are there (or it is no stage). The base (models/base) is the trainer's to judge: it
    may ship with polyvox or not be wanted (train.init_from, a conversion member); the neural vocoder
    the ensemble's (ensemble.vocoder: griffin-lim needs none; neural names `polyvox train-vocoder`)."""
    spec = STAGES.get(name)
    for dep in spec.deps if spec else ():
        if "${" in dep or (workspace.root / dep).exists() or producer(dep) in ("pretrain", "train-vocoder"):
            continue
        return f"{dep} is missing; {_remedy(dep)}"
    return None


def _stage_command(name: str) -> None:
    """Register ``polyvox <name>`` for a stage that takes nothing but params: its spec's function on
    the params file, its summary printed, its spec's ``about`` as the help."""
    spec = STAGES[name]

    def command(params: ParamsOption = DEFAULT_PARAMS_FILE, set_: SetOption = None) -> None:
        typer.echo(_run_stage(spec.command, spec.function(), params, set_, lambda p: [name]).summary())

    command.__doc__ = spec.about
    app.command(name)(command)


def _fail(exc: Exception) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2 if isinstance(exc, ConfigError) else 1)


def _version(value: bool) -> None:
    if value:
        from polyvox import __version__

        typer.echo(f"polyvox {__version__}")
        raise typer.Exit()


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print polyvox's version and exit.")] = False) -> None:
    _setup_logging(verbose)


@app.command()
def prepare(
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus to ingest (default: prepare.corpus; none = demo).")] = None,
    corpus_format: Annotated[
        Optional[str], typer.Option("--format", help="auto | ljspeech | vctk | manifest (default: prepare.format).")
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS_FILE,
    set_: SetOption = None,
) -> None:
    """Ingest a corpus (or build the demo corpus) into data/raw: manifest + audio + images."""
    from polyvox.corpus.prepare import prepare as run_prepare

    overrides = list(set_ or [])
    if corpus_format is not None:
        overrides.append(f"prepare.format={corpus_format}")
    with user_errors():
        loaded = _load(params, overrides)
        if corpus is not None:
            loaded = loaded.model_copy(update={"prepare": loaded.prepare.model_copy(update={"corpus": corpus})})
        with workspace_lock(Path.cwd(), "polyvox prepare"):
            result = run_prepare(loaded, Workspace.here())
            if corpus is None and dvcstate.why_not(Path.cwd(), params, overrides) is None:
                dvcstate.record(Path.cwd(), ["prepare"], None)
    typer.echo(result.summary())


@app.command()
def validate(params: ParamsOption = DEFAULT_PARAMS_FILE, set_: SetOption = None) -> None:
    """Validate data/raw (Great Expectations + audio probes): accepted rows and a quarantine with reasons."""
    from polyvox.validate.stage import validate as run_validate

    result = _run_stage("polyvox validate", run_validate, params, set_, dvc_stages=lambda p: ["validate"])
    typer.echo(result.summary())
    if result.data_docs:
        typer.echo(f"Data Docs: {result.data_docs}")


for _name in ("clean", "features"):
    _stage_command(_name)


def _commit() -> str:
    """The commit of the polyvox code running (``git describe``), for the card of what it ships."""
    import subprocess

    described = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty",
                                "--abbrev=12"], capture_output=True, text=True)
    return described.stdout.strip() if described.returncode == 0 else "unknown (not a git checkout)"


@app.command()
def pretrain(
    params: ParamsOption = DEFAULT_PARAMS_FILE, set_: SetOption = None,
    ship: Annotated[bool, typer.Option(
        "--ship", help="Write the base this run trained into the package (polyvox/pretrained/base) with its "
                       "card (pretrain.source must be null).")] = False,
) -> None:
    """Build models/base, the model every voice fine-tunes from: copied from the base that ships with polyvox
    (pretrain.source: shipped), from another folder, or trained on the base corpus (pretrain.source: null)."""
    from polyvox.pretrain.stage import pretrain as run_pretrain, ship_base

    result = _run_stage(STAGES["pretrain"].command, run_pretrain, params, set_, lambda p: ["pretrain"])
    typer.echo(result.summary())
    if ship:
        shipped = _run_stage(STAGES["pretrain"].command + " --ship",
                             lambda loaded, workspace: ship_base(loaded, workspace, result, _commit()), params, set_)
        typer.echo(f"shipped the base into {shipped} (card: {shipped / 'CARD.md'})")


@app.command()
def train(
    member: Annotated[Optional[str], typer.Option(
        help="A member listed under train.members (checkpoints go to models/<member>/). Default: every member.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the member's seed.")] = None,
    init_from: Annotated[Optional[Path], typer.Option(
        help="Warm start from this member folder or .pt (default: train.init_from).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore an existing last.pt and start over.")] = False,
    params: ParamsOption = DEFAULT_PARAMS_FILE,
    set_: SetOption = None,
) -> None:
    """Train members of the acoustic model on data/features (GPU when present; under torchrun, DDP)."""
    from polyvox.train.trainer import train as run_train

    def run_members(p: Params, ws: Workspace) -> list:
        names = [p.train.member(member).name] if member is not None else [m.name for m in p.train.members]
        return [run_train(p, ws, member=name, seed=seed, resume=not fresh, init_from=init_from) for name in names]

    def made(p: Params) -> list[str]:  # a seed or warm start of the command line is not what dvc.yaml says
        if seed is not None or init_from is not None:
            return []
        return [f"train@{name}" for name in ([p.train.member(member).name] if member else [m.name for m in p.train.members])]

    for result in _run_stage("polyvox train", run_members, params, set_, dvc_stages=made):
        typer.echo(result.summary())


@app.command("train-vocoder")
def train_vocoder(
    name: Annotated[str, typer.Option(help="Checkpoints go to models/<name>/.")] = "vocoder",
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore an existing last.pt and start over.")] = False,
    params: ParamsOption = DEFAULT_PARAMS_FILE,
    set_: SetOption = None,
    ship: Annotated[bool, typer.Option(
        "--ship", help="Write the trained vocoder into the package as the universal vocoder "
                       "(polyvox/pretrained/vocoder, vocoder.init_from: shipped) with its card.")] = False,
) -> None:
    """Train the neural vocoder (log-mel → waveform) on the clean corpus; settings in params `vocoder`."""
    import shlex

    from polyvox.train.vocoder import ship_vocoder, train_vocoder as run_vocoder

    result = _run_stage(STAGES["train-vocoder"].command, lambda p, ws: run_vocoder(p, ws, name=name, resume=not fresh),
                        params, set_, dvc_stages=lambda p: ["train-vocoder"] if name == "vocoder" else [])
    typer.echo(result.summary())
    if ship:
        command = shlex.join(["polyvox", *sys.argv[1:]])
        shipped = _run_stage(STAGES["train-vocoder"].command + " --ship",
                             lambda p, ws: ship_vocoder(p, ws, name, result, command, _commit()), params, set_)
        typer.echo(f"shipped the vocoder into {shipped} (card: {shipped / 'CARD.md'})")


for _name in ("ensemble", "evaluate"):
    _stage_command(_name)


@app.command()
def promote(params: ParamsOption = DEFAULT_PARAMS_FILE, set_: SetOption = None) -> None:
    """Register the evaluated candidate in MLflow and move the `champion` alias if every gate rule passes."""
    from polyvox.registry.stage import promote as run_promote

    result = _run_stage(STAGES["promote"].command, run_promote, params, set_, dvc_stages=lambda p: ["promote"])
    typer.echo(result.summary())
    for rule in result.rules:
        mark = "pass" if rule["passed"] else "FAIL"
        typer.echo(f"  {mark:4} {rule['rule']}: {rule['value']} {rule['op']} {rule['threshold']} ({rule['detail']})")


@app.command()
def rollback(
    to: Annotated[Optional[str], typer.Option(help="Version to make champion (default: the champion before this one).")] = None,
    params: ParamsOption = DEFAULT_PARAMS_FILE,
    set_: SetOption = None,
) -> None:
    """Move the `champion` alias back and restore models/champion from the registry."""
    from polyvox.registry.stage import rollback as run_rollback

    result = _run_stage("polyvox rollback", lambda p, ws: run_rollback(p, ws, to=to), params, set_,
                        dvc_stages=lambda p: [])
    typer.echo(result.summary())


@app.command()
def serve(
    bundle: Annotated[Optional[Path], typer.Option(help="Bundle to serve (default: models/champion, the champion).")] = None,
    host: Annotated[Optional[str], typer.Option(help="Interface (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: serve.port).")] = None,
    params: ParamsOption = DEFAULT_PARAMS_FILE,
    set_: SetOption = None,
) -> None:
    """Serve the champion over HTTP: POST /synthesize, GET /voices, /healthz, /metrics (token: POLYVOX_TOKEN)."""
    from polyvox.serve.app import serve as run_serve

    with user_errors():
        loaded = _load(params, set_)
    folder = bundle or Workspace.here().champion
    recover_folder(folder)  # a promote killed between its two renames left the bundle aside
    if not (folder / "bundle.json").is_file():
        _fail(ConfigError(f"{folder}: no serving bundle; run the pipeline and `polyvox promote` first"))
    run_serve(folder, loaded.serve, host=host, port=port)


@app.command()
def synth(
    text: Annotated[Optional[str], typer.Argument(help="What to say; `-` or nothing: read it from stdin.")] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="WAV file to write; `-`: standard output.")] = "out.wav",
    speaker: Annotated[Optional[str], typer.Option(help="A training speaker's name.")] = None,
    reference_audio: Annotated[Optional[Path], typer.Option(help="Audio of the voice to imitate.")] = None,
    image: Annotated[Optional[Path], typer.Option(help="An image of the speaker (PNG/JPEG).")] = None,
    voice: Annotated[Optional[Path], typer.Option(help="Bundle, voice or member folder (default: the champion, "
                                                       "else models/candidate); works outside a project.")] = None,
    length_scale: Annotated[float, typer.Option("--length-scale", help="Durations × this: 1 is the voice's "
                                                                       "pace, 1.2 is 20 % slower.")] = 1.0,
    list_speakers: Annotated[bool, typer.Option("--list-speakers", help="Print the voice's speakers and exit.")] = False,
    params: ParamsOption = DEFAULT_PARAMS_FILE,
    set_: SetOption = None,
) -> None:
    """Synthesise text to a WAV file, like Piper: `echo "Hello." | polyvox synth -o out.wav --voice models/champion`."""
    from polyvox.runtime.voice import Voice

    with user_errors(ValueError):
        if voice is None or params != DEFAULT_PARAMS_FILE or params.is_file() or set_:
            _load(params, set_)  # a broken params file or override is refused here too (none needed with --voice)
        ws = Workspace.here()
        folder = voice or next((f for f in (ws.champion, ws.candidate)
                                if (f / VOICE_FILE).is_file()), None)
        if folder is None:
            raise ConfigError("no voice to speak with: no champion bundle and no models/candidate here; pass --voice")
        chosen = Voice.load(folder)
        if list_speakers:
            typer.echo("\n".join(chosen.speakers))
            return
        if text is None or text == "-":
            if sys.stdin.isatty():
                raise ConfigError("no text: give it as an argument or pipe it in (`echo Hello. | polyvox synth`)")
            text = sys.stdin.read()
        text = " ".join(text.split())  # lines of a piped file are one text; its sentences keep their order
        if not text:
            raise ConfigError("the text is empty: nothing to say")
        for path in (reference_audio, image):
            if path is not None and not path.is_file():
                raise ConfigError(f"{path}: no such file")
        if output == "-":
            buffer = io.BytesIO()
            seconds = chosen.synthesize_wav(text, buffer, speaker, reference_audio, image, length_scale)
            sys.stdout.buffer.write(buffer.getvalue())
            sys.stdout.buffer.flush()
        else:
            seconds = chosen.synthesize_wav(text, Path(output), speaker, reference_audio, image, length_scale)
    # the summary goes to stderr when the audio goes to stdout
    typer.echo(f"{output}: {seconds:.2f} s at {chosen.sample_rate} Hz from {folder}", err=output == "-")


@app.command()
def dashboard(
    host: Annotated[str, typer.Option(help="Interface; keep 127.0.0.1 unless you mean to share it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8050,
    params: ParamsOption = DEFAULT_PARAMS_FILE,
    set_: SetOption = None,
) -> None:
    """A read-only page of the run history (MLflow, and Prefect when PREFECT_API_URL is set)."""
    from polyvox.dashboard.app import dashboard as run_dashboard
    from polyvox.tracking import tracking_uri

    with user_errors():
        loaded = _load(params, set_)
    uri = tracking_uri(Workspace.here(), loaded.registry.tracking_uri)
    if uri is None:
        _fail(ConfigError("the dashboard reads MLflow, but MLFLOW_TRACKING_URI=off turns it off"))
    run_dashboard(uri, loaded.registry.model_name, host=host, port=port)


def _check_prefect_server() -> None:
    """With PREFECT_API_URL set, the server must answer before the flow starts (Prefect's client
    would otherwise retry, then fail with a long traceback); without it the embedded server is used."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url:
        return
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise PrefectUnavailable(f"Prefect server {url} is unreachable ({type(exc).__name__}: {exc}); start it "
                                 f"(`prefect server start`), or unset PREFECT_API_URL to run on the embedded "
                                 f"server. Nothing has run.") from None


@app.command()
def run(params: ParamsOption = DEFAULT_PARAMS_FILE, set_: SetOption = None) -> None:
    """Run the whole pipeline as a Prefect flow (embedded server unless PREFECT_API_URL is set)."""
    with user_errors():
        _load(params, set_)  # fail fast, before Prefect starts, on a bad params file
        _check_prefect_server()
    from polyvox.flow import pipeline

    state = pipeline(params_file=str(params), overrides=list(set_ or []), return_state=True)
    if not state.is_completed():
        err.print(f"[bold red]pipeline {state.name}:[/] {escape(str(state.message))}", soft_wrap=True)
        raise typer.Exit(code=1)
    for stage, summary in state.result().items():
        typer.echo(f"{stage}: {summary}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
