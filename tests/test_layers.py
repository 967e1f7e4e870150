"""The package's layers hold (polyvox.imports.LAYERS): no part imports a layer above it, neither the
parts' graph nor the modules inside a part have cycles, and serving imports nothing of training —
function-level imports included."""

from __future__ import annotations

from polyvox.imports import _imported, closure, graph, layer_violations


def test_the_package_keeps_its_layers():
    assert layer_violations() == []


def _with(*edges: tuple[str, str]) -> dict[str, frozenset[str]]:
    changed = dict(graph())
    for source, target in edges:
        changed[source] = changed[source] | {target}
    return changed


def test_an_upward_import_is_caught():
    problems = layer_violations(_with(("polyvox.models.acoustic", "polyvox.train.trainer")))
    assert any("polyvox.models.acoustic imports polyvox.train.trainer" in p and "reaches up" in p for p in problems), problems
    assert any(p.startswith("import cycle") and "models" in p and "train" in p for p in problems), problems


def test_a_cycle_inside_one_layer_is_caught():
    # runtime and judges share a layer: either may import the other, not both
    problems = layer_violations(_with(("polyvox.runtime.voice", "polyvox.judges.speaker"),
                                      ("polyvox.judges.speaker", "polyvox.runtime.voice")))
    assert problems == [p for p in problems if p.startswith("import cycle")] and len(problems) == 1, problems
    assert "judges" in problems[0] and "runtime" in problems[0]


def test_a_cycle_between_modules_of_one_part_is_caught():
    # models/meta.py ↔ models/neural_vocoder.py was one (a function-level import back), before issue 40
    problems = layer_violations(_with(("polyvox.models.neural_vocoder", "polyvox.models.meta")))
    assert problems == ["import cycle inside models: polyvox.models.meta → polyvox.models.neural_vocoder → "
                        "polyvox.models.meta"], problems


def test_serving_that_reaches_training_is_caught():
    # tracking is foundation (no layer rule breaks) but it is training's, not the service's
    problems = layer_violations(_with(("polyvox.runtime.bundle", "polyvox.tracking")))
    assert problems == ["serving imports training: polyvox.runtime.bundle → polyvox.tracking"], problems


def test_an_import_inside_a_function_counts(tmp_path):
    source = tmp_path / "late.py"
    source.write_text("def f():\n    from polyvox.train import trainer\n    import polyvox.judges.scores as s\n"
                      "    from .acoustic import AcousticModel\n")
    found = _imported("polyvox.models.late", source)
    assert {"polyvox.train.trainer", "polyvox.judges.scores", "polyvox.models.acoustic"} <= found, found
    assert {"polyvox.train", "polyvox.judges"} <= found  # importing a module runs its packages' __init__


def test_the_service_runs_no_training_code():
    reached = closure("polyvox.serve.app")
    assert "polyvox.runtime.voice" in reached
    assert not any(m.startswith(("polyvox.train", "polyvox.evaluate", "polyvox.registry")) for m in reached), reached
