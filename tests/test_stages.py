"""dvc.yaml says what polyvox.stages.STAGES says: the same command, params, data, code and outputs
for every stage, so that `dvc repro` reruns a stage exactly when polyvox's own fingerprint would."""

from __future__ import annotations

import copy

import pytest
import yaml

from polyvox.config import load_params
from polyvox.stages import STAGES

from conftest import REPO
from test_orchestration import _expand, _flatten


def _names(entries: list) -> set[str]:
    """dvc.yaml list entries are a path, or ``{path: {options}}``."""
    return {e if isinstance(e, str) else next(iter(e)) for e in entries or []}


def drift(dvc: dict, params: dict) -> list[str]:
    """Every difference between a dvc.yaml (parsed) and the stage specs, one line each."""
    problems = []
    declared = dvc["stages"]
    if list(declared) != list(STAGES):
        problems.append(f"stages: dvc.yaml has {list(declared)}, the specs {list(STAGES)}")
    members = list(params["train"]["members"])
    combined = params["ensemble"]["members"] or members
    for name, spec in STAGES.items():
        entry = declared.get(name)
        if entry is None:
            continue
        if "foreach" in entry:
            if entry["foreach"] != "${train.members}":
                problems.append(f"{name}: foreach {entry['foreach']}, not ${{train.members}}")
            entry = entry["do"]
        if entry.get("cmd") != spec.command:
            problems.append(f"{name}: cmd {entry.get('cmd')!r}, the spec runs {spec.command!r}")
        if set(entry.get("params") or []) != set(spec.params):
            problems.append(f"{name}: params {sorted(entry.get('params') or [])}, the spec reads {sorted(spec.params)}")
        deps = set(spec.dvc_deps()) | ({f"models/{m}/best.pt" for m in combined} if name == "ensemble" else set())
        listed = _names(entry.get("deps"))
        for missing in sorted(deps - listed):
            problems.append(f"{name}: deps lack {missing}")
        for extra in sorted(listed - deps):
            problems.append(f"{name}: deps list {extra}, which the stage does not read")
        outs = _names(entry.get("outs")) | _names(entry.get("metrics")) | _names(entry.get("plots"))
        if outs != set(spec.outs):
            problems.append(f"{name}: outs/metrics/plots {sorted(outs)}, the spec writes {sorted(spec.outs)}")
    return problems


def _files():
    return (yaml.safe_load((REPO / "dvc.yaml").read_text()), yaml.safe_load((REPO / "params.yaml").read_text()))


def test_dvc_yaml_says_what_the_stage_specs_say():
    dvc, params = _files()
    problems = drift(dvc, params)
    assert not problems, "dvc.yaml drifted from polyvox.stages.STAGES:\n" + "\n".join(problems) + "\n\nwhat each " \
        "stage's deps should be:\n" + "\n".join(f"{n}: {s.dvc_deps()}" for n, s in STAGES.items())


def test_a_hand_broken_dvc_yaml_is_caught():
    dvc, params = _files()
    broken = copy.deepcopy(dvc)
    broken["stages"]["clean"]["params"].remove("clean")
    broken["stages"]["features"]["deps"].remove("src/polyvox/signal")  # code the stage runs
    broken["stages"]["train"]["do"]["deps"].append("src/polyvox/serve")  # code it does not
    broken["stages"]["ensemble"]["deps"] = [d for d in broken["stages"]["ensemble"]["deps"]
                                            if not d.startswith("models/voice/")]  # a member it combines
    broken["stages"]["promote"]["cmd"] = "polyvox promote --force"
    del broken["stages"]["evaluate"]["metrics"]
    problems = drift(broken, params)
    for expected in ("clean: params", "features: deps lack src/polyvox/signal",
                     "train: deps list src/polyvox/serve", "ensemble: deps lack models/voice/best.pt",
                     "promote: cmd", "evaluate: outs"):
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    assert len(problems) == 6, problems


def test_specs_name_real_params_commands_and_code():
    from typer.main import get_command

    from polyvox.cli import app

    params = load_params(REPO / "params.yaml")
    keys = _flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    commands = set(get_command(app).commands)
    for name, spec in STAGES.items():
        assert set(spec.params) <= keys, (name, set(spec.params) - keys)
        assert spec.command.split()[1] in commands, spec.command
        assert callable(spec.function()), name  # the stage function the CLI, the flow and DVC run
        settings = spec.settings(params)
        assert set(settings) == {k.partition(".")[0] for k in spec.params}, name
        assert all((REPO / d).exists() for d in spec.dvc_deps() if d.startswith("src/")), name
        assert spec.code and all("/" not in part for part in spec.code), spec.code
    # the layers show in what each stage runs: serving and the other stages are no code of training
    assert "serve" not in STAGES["train"].code and "evaluate" not in STAGES["train"].code
    assert {"runtime", "judges"} <= set(STAGES["evaluate"].code)


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_stage_identity_follows_its_settings_and_only_them(stage):
    params = load_params(REPO / "params.yaml")
    spec = STAGES[stage]
    base = spec.identity(params)
    assert spec.identity(load_params(REPO / "params.yaml")) == base
    read = {"train": ["train.lr=0.0005"], "evaluate": ["evaluate.centroid_takes=7"]}[stage]
    unread = {"train": ["evaluate.centroid_takes=7"], "evaluate": ["train.lr=0.0005"]}[stage]
    assert spec.identity(load_params(REPO / "params.yaml", read)) != base
    assert spec.identity(load_params(REPO / "params.yaml", unread)) == base
    assert spec.identity(load_params(REPO / "params.yaml", ["parallel.workers=1"])) == base  # speed, not outputs


def test_orchestration_expands_the_same_stages():
    dvc, params = _files()
    expanded = _expand(dvc["stages"], params)
    assert [n.split("@")[0] for n in expanded] == [n for n in STAGES for _ in
                                                  (params["train"]["members"] if n == "train" else [None])]


def test_the_readme_code_map_names_each_stage_s_module_command_and_dvc_stage():
    """README's code map is the newcomer's index: one row per stage, true to STAGES."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Code map"):text.index("## Where outputs go")]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert [name for name in rows if name != "stage"] == list(STAGES)
    for name, spec in STAGES.items():
        row = rows[name]
        module = spec.module.removeprefix("polyvox.").replace(".", "/") + ".py"
        assert f"`{module}`" in row and f"`{spec.command.split(' --')[0]}" in row, (name, row)
        assert (REPO / "src/polyvox" / module).is_file(), module
        assert f"`{name}@NAME`" in row if "${" in spec.command else f"| `{name}` |" in row, row


def test_the_stages_that_stamp_their_outputs_keep_the_stage_protocol():
    """train, train-vocoder, ensemble and evaluate stamp their outputs: their modules give
    input_fingerprint and completed (which takes inputs=, the fingerprint computed once); a stage
    whose module does not is refused by name, not with an AttributeError from deep inside the flow."""
    import inspect

    for name in ("train", "train-vocoder", "ensemble", "evaluate"):
        module = STAGES[name].stamped()
        assert "inputs" in inspect.signature(module.completed).parameters, name
        assert list(inspect.signature(module.input_fingerprint).parameters)[:2] == ["params", "workspace"], name
    with pytest.raises(TypeError, match="stage clean: polyvox.clean.stage does not stamp its outputs"):
        STAGES["clean"].stamped()
