"""Harness parts (c)/(d): subject variants learned on the world model, rendered through compositions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cones2.world.scenes import Scene, SceneObject


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cones2.world.model import build_world_model

    return build_world_model(tmp_path_factory.mktemp("world") / "model", seed=5)


def _scene(square_pattern: str = "plain", circle_pattern: str = "stripes") -> Scene:
    return Scene((SceneObject("circle", "red", 9.0, 9.0, 8.0, circle_pattern),
                  SceneObject("square", "blue", 23.0, 23.0, 8.0, square_pattern)), seed=1)


def test_scores_count_fidelity_leakage_and_baseline() -> None:
    from cones2.world.subjects import score

    plain = _scene(circle_pattern="plain").render()
    good = _scene().render()  # the striped circle, a plain square
    leaky = _scene(square_pattern="stripes").render()  # the stripes also on the square
    scenes = [_scene(), _scene()]
    res = score(["striped-circle"], scenes, [good, leaky], [plain, good], guided=False)
    assert res.fidelity == {"striped-circle": 1.0}
    assert res.leakage == {"striped-circle": 0.5}
    assert res.baseline == {"striped-circle": 0.5}  # the second "without" image shows stripes
    # a second subject with another pattern: its object counts as a place the stripes must not go
    res2 = score(["striped-circle", "dotted-square"], scenes[:1], [leaky], [plain], guided=True)
    assert res2.leakage["striped-circle"] == 1.0 and res2.fidelity["dotted-square"] == 0.0
    assert res2.summary()["guided"] is True


def test_pattern_ceiling_on_ground_truth_is_high() -> None:
    from cones2.world.subjects import pattern_ceiling

    single, pair = pattern_ceiling([["striped-circle"], ["striped-circle", "dotted-square"]], 20)
    assert single == {"striped-circle": 1.0}
    assert set(pair) == {"striped-circle", "dotted-square"} and min(pair.values()) >= 0.9


def test_guided_composition_carries_the_scene_boxes_and_the_settings(world_dir: Path) -> None:
    from cones2.composition import Composition
    from cones2.world.subjects import harness_settings, variant_composition

    settings = harness_settings(steps=3, guidance_weight=0.16)
    scene = _scene()
    comp = variant_composition(world_dir, scene, {"striped-circle": "striped-circle@1"}, guided=True, settings=settings)
    assert comp.prompt == "a red circle and a blue square" and comp.seeds == (1,)
    assert [(s.key, s.ref) for s in comp.subjects] == [("circle", "striped-circle@1")]
    boxes = dict(comp.layout.boxes)
    assert set(boxes) == {"red", "circle", "blue", "square"}
    assert boxes["circle"] == pytest.approx((1 / 32, 1 / 32, 17 / 32, 17 / 32))
    assert comp.sampler.steps == 3 and comp.sampler.guidance_weight == 0.16 and comp.sampler.scheduler == "default"
    assert Composition.from_dict(comp.to_dict()) == comp  # a plain composition (TOML-able)
    assert variant_composition(world_dir, scene, {}, guided=False, settings=settings).layout is None


def test_variants_train_on_the_world_model_and_measure_through_render(world_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from cones2.registry import open_catalogue
    from cones2.world import subjects

    refs = subjects.train_variants(world_dir, ["striped-circle", "dotted-square"], steps=1, images=2)
    assert refs == {"striped-circle": "striped-circle@1", "dotted-square": "dotted-square@1"}
    with open_catalogue() as cat:  # registered in the test's CONES2_HOME, for the world model, as their shape word
        circle, square = cat.resolve("striped-circle@1"), cat.resolve("dotted-square@1")
    assert (circle.word, square.word) == ("circle", "square")
    assert circle.token_ids != square.token_ids and len(circle.token_ids) == 1

    render_module = importlib.import_module("cones2.composition.render")  # the module, not the function
    rendered: list[int] = []
    real = render_module.render

    def counting(jobs, options=None):  # noqa: ANN001, ANN202 - a spy on the composition path
        rendered.append(len(jobs))
        return real(jobs, options)

    monkeypatch.setattr(render_module, "render", counting)
    settings = subjects.harness_settings(steps=2)
    out = subjects.measure(world_dir, refs, [["striped-circle"], ["striped-circle", "dotted-square"]], 1,
                           settings=settings)
    # (c) one subject, (d) two; each unguided then guided; one render call for all 8 images (4 with, 4 without)
    assert [(r.subjects, r.guided) for r in out] == [
        (["striped-circle"], False), (["striped-circle"], True),
        (["striped-circle", "dotted-square"], False), (["striped-circle", "dotted-square"], True),
    ]
    assert rendered == [8]
    for r in out:
        for table in (r.fidelity, r.leakage, r.baseline):
            assert set(table) == set(r.subjects) and all(v in (0.0, 1.0) for v in table.values())

    # the residual reaches the image: with the subject differs from without it (same seed, same scene)
    from cones2.world.subjects import composition_scenes

    scene = composition_scenes(["striped-circle"], 1)[0]
    with_s, without = subjects.render_compositions([
        subjects.variant_composition(world_dir, scene, {"striped-circle": refs["striped-circle"]}, guided=False,
                                     settings=settings),
        subjects.variant_composition(world_dir, scene, {}, guided=False, settings=settings),
    ])
    assert with_s.shape == (32, 32, 3) and with_s.dtype == np.uint8
    assert np.abs(with_s.astype(int) - without.astype(int)).max() > 0
