"""One recipe: `make demo`, `dvc repro`, `polyvox run` and the nightly deployment all train what
params.yaml says, and a corpus profile is an overlay that states only what differs."""

from __future__ import annotations

import re

import pytest
import yaml

from polyvox.config import ConfigError, load_params

from conftest import REPO


def _recipe(target: str) -> list[str]:
    """The command lines of a Makefile target."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{target}:", line))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        body.append(line.strip())
    return body


def test_make_demo_runs_params_yaml_as_it_is():
    commands = [c for c in _recipe("demo") if "polyvox" in c]
    assert commands and any(c.endswith("polyvox run") for c in commands), commands
    assert not any("-S" in c or "--set" in c or "--params" in c for c in commands), commands


def test_dvc_and_the_nightly_deployment_read_the_same_params_file():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        assert cmd.startswith("polyvox ") and " -S" not in cmd and "--params" not in cmd, (name, cmd)
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    nightly = next(d for d in deployments if d["name"] == "nightly")
    assert nightly["parameters"] == {"params_file": "params.yaml"}
    # the flow, the CLI and dvc (through the CLI) load one object from that file
    from polyvox import cli, flow

    assert cli.DEFAULT_PARAMS_FILE.name == "params.yaml"
    import inspect

    assert inspect.signature(flow.pipeline.fn).parameters["params_file"].default == "params.yaml"


def test_params_yaml_is_the_measured_demo_recipe():
    params = load_params(REPO / "params.yaml")
    assert params.prepare.corpus is None  # the demo corpus
    assert params.demo.voices == ["flite_slt", "flite_rms"]
    assert [(m.name, m.kind) for m in params.train.members] == [("voice", "convert")]  # Decisions
    assert params.promote.max_rtf >= 0.5  # a converter renders the teacher per sentence
    assert params.train.max_steps == "auto" and params.train.lr_schedule == "cosine"
    assert params.evaluate.asr == "whisper"


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_profile_overlays_only_what_differs(tmp_path):
    base = _write(tmp_path / "params.yaml", (REPO / "params.yaml").read_text())
    profile = _write(tmp_path / "profiles/mine.yaml", "extends: ../params.yaml\nprepare:\n  corpus: corpora/mine\n"
                                                       "train:\n  max_minutes: 60\n")
    merged, plain = load_params(profile), load_params(base)
    assert str(merged.prepare.corpus) == "corpora/mine" and merged.train.max_minutes == 60
    # every other key, nested ones included, is the base's
    assert merged.prepare.format == plain.prepare.format and merged.train.lr == plain.train.lr
    assert merged.model == plain.model
    assert load_params(profile, ["train.lr=0.001"]).train.lr == 0.001  # -S still applies on top


def test_a_profile_names_its_own_mistakes(tmp_path):
    _write(tmp_path / "params.yaml", (REPO / "params.yaml").read_text())
    typo = _write(tmp_path / "p/typo.yaml", "extends: ../params.yaml\ntrain:\n  max_minuets: 5\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key 'train\.max_minuets'"):
        load_params(typo)
    missing = _write(tmp_path / "p/missing.yaml", "extends: ../nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: params file not found \(extended by .*missing\.yaml\)"):
        load_params(missing)
    a = _write(tmp_path / "p/a.yaml", "extends: b.yaml\n")
    _write(tmp_path / "p/b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_params(a)


def test_the_shipped_profiles_load():
    for profile in sorted((REPO / "profiles").glob("*.yaml")):
        params = load_params(profile)
        # a corpus profile names its corpus; a recipe variant of the demo (demo-*.yaml) reads the demo corpus
        assert (params.prepare.corpus is None) == profile.name.startswith("demo-"), profile
