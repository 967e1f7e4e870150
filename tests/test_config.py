from __future__ import annotations

from pathlib import Path

import pytest

from polyvox.config import ConfigError, load_params

from conftest import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def repo_params_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (REPO / "params.yaml").read_text()
    assert old in text, old
    return write(tmp_path, text.replace(old, new, 1))


def test_repo_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.prepare.corpus is None
    assert len(params.demo.voices) >= 2
    assert params.demo.utterances_per_speaker > 0


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    path = write(tmp_path, (REPO / "params.yaml").read_text() + "\nbogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert "unknown key 'bogus'" in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_nested_key(tmp_path):
    path = repo_params_with(tmp_path, "  workers:", "  wokers:")
    message = str(pytest.raises(ConfigError, load_params, path).value)
    assert "unknown key 'parallel.wokers'" in message
    assert "missing key 'parallel.workers'" in message
    assert str(path) in message


def test_mistyped_value(tmp_path):
    path = repo_params_with(tmp_path, "utterances_per_speaker: ", "utterances_per_speaker: many #")
    message = str(pytest.raises(ConfigError, load_params, path).value)
    assert "demo.utterances_per_speaker" in message and "'many'" in message


def test_out_of_range_and_duplicate_values(tmp_path):
    path = repo_params_with(tmp_path, "workers: ", "workers: 0 #")
    assert "parallel.workers" in str(pytest.raises(ConfigError, load_params, path).value)
    path = repo_params_with(tmp_path, "voices: [flite_slt,", "voices: [flite_slt, flite_slt,")
    assert "listed twice" in str(pytest.raises(ConfigError, load_params, path).value)


def test_overrides_parse_like_dvc():
    params = load_params(
        REPO / "params.yaml",
        ["demo.utterances_per_speaker=7", "prepare.corpus=corpora/mine", "demo.voices=[flite_slt, flite_awb]", "seed=9"],
    )
    assert params.demo.utterances_per_speaker == 7
    assert params.prepare.corpus == Path("corpora/mine")
    assert params.demo.voices == ["flite_slt", "flite_awb"]
    assert params.seed == 9


@pytest.mark.parametrize(
    "override, expected",
    [
        ("demo.colour=red", "unknown key 'demo.colour'"),
        ("nothing.here=1", "unknown key 'nothing'"),
        ("seed", "not of the form key.path=value"),
        ("demo.utterances_per_speaker=lots", "demo.utterances_per_speaker"),
        ("demo..x=1", "malformed key"),
    ],
)
def test_bad_overrides(override, expected):
    with pytest.raises(ConfigError) as info:
        load_params(REPO / "params.yaml", [override])
    assert expected in str(info.value)
    assert "params.yaml" in str(info.value)


def test_missing_and_invalid_files(tmp_path):
    assert "not found" in str(pytest.raises(ConfigError, load_params, tmp_path / "nope.yaml").value)
    assert "invalid YAML" in str(pytest.raises(ConfigError, load_params, write(tmp_path, "seed: [1,\n")).value)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"seed: 1 # caf\xe9\n")
    assert "not UTF-8" in str(pytest.raises(ConfigError, load_params, bad).value)
    assert "missing key 'seed'" in str(pytest.raises(ConfigError, load_params, write(tmp_path, "")).value)


def test_cross_field_checks(tmp_path):
    path = repo_params_with(tmp_path, "  f_max: 8000", "  f_max: 20000")
    assert "sample_rate/2" in str(pytest.raises(ConfigError, load_params, path).value)
    params = load_params(REPO / "params.yaml", ["validate.asr_check=true"])
    assert params.validate_.asr_check is True


@pytest.mark.parametrize("key", ["train.max_steps", "pretrain.max_steps"])
def test_step_bounds_are_a_positive_count_or_auto(key):
    with pytest.raises(ConfigError, match=rf"'{key}': max_steps must be a positive step count or 'auto', got 0"):
        load_params(REPO / "params.yaml", [f"{key}=0"])
    assert load_params(REPO / "params.yaml", [f"{key}=auto"]) and load_params(REPO / "params.yaml", [f"{key}=7"])


def test_members_are_keyed_by_name_and_a_profile_replaces_them_whole(tmp_path):
    """params.yaml keys members by name (dvc.yaml's foreach then names the stage train@voice); the
    list form still reads; a profile's members are its ensemble, not additions to the base file's."""
    params = load_params(REPO / "params.yaml")
    assert [m.name for m in params.train.members] == ["voice"]
    assert load_params(REPO / "params.yaml", ["train.members=[{name: a, seed: 1, conditioning: audio, variant: {}}]"]
                       ).train.members[0].name == "a"
    assert [m.name for m in load_params(REPO / "profiles" / "kathleen-a.yaml").train.members] == ["kathleen"]
    overlay = tmp_path / "two.yaml"
    overlay.write_text(f"extends: {REPO / 'params.yaml'}\ntrain:\n  members:\n"
                       "    a: {seed: 1, conditioning: audio, variant: {}}\n    b: {seed: 2, conditioning: audio, variant: {}}\n")
    assert [(m.name, m.seed) for m in load_params(overlay).train.members] == [("a", 1), ("b", 2)]
    overlay.write_text(f"extends: {REPO / 'params.yaml'}\ntrain:\n  members:\n"
                       "    a: {name: b, seed: 1, conditioning: audio, variant: {}}\n")
    message = str(pytest.raises(ConfigError, load_params, overlay).value)
    assert "member 'a' says name 'b'" in message
