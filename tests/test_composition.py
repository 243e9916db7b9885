"""Compositions: TOML/PNG round trips, locks, rendering again bit for bit, batches, processes.

Everything runs on the demo model at 64 px with 2 steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cones2.cli import main
from cones2.composition import Composition, LayoutSpec, SubjectSpec, read_lock
from cones2.errors import CompositionError, LockError
from cones2.sampler.presets import resolve_settings

PROMPT = "a dog and a mug on the beach"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """On a shared 2-core machine one torch thread is several times faster than two."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def ok(*args: object) -> str:
    code, out, err = cli(*args)
    assert code == 0, err
    return out


def refused(*args: object, code: int | None = None, text: str | None = None) -> str:
    exit_code, _, err = cli(*args)
    assert exit_code != 0, f"cones2 {args} succeeded"
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    if code is not None:
        assert exit_code == code, err
    if text is not None:
        assert text in err, err
    return err


def residual(demo_text_encoder, fp: str, seed: int, word: str = "dog"):
    import torch

    from cones2.residual import word_token_ids
    from cones2.residual_file import make_residual

    return make_residual(torch.randn(1, 32, generator=torch.Generator().manual_seed(seed)), word,
                         word_token_ids(demo_text_encoder[0], word), fp)


@pytest.fixture()
def fp(demo_model_dir: Path) -> str:
    from cones2.base_model import model_info

    return model_info(str(demo_model_dir)).fingerprint


@pytest.fixture()
def dog_max(demo_text_encoder, fp):
    """dog-max@1 in the test's catalogue."""
    from cones2.registry import open_catalogue

    rf = residual(demo_text_encoder, fp, 0)
    with open_catalogue() as cat:
        cat.add(rf, "dog-max")
    return rf


def composition(**changes) -> Composition:
    base = dict(
        prompt=PROMPT, subjects=(SubjectSpec("dog", ref="dog-max"),),
        layout=LayoutSpec(boxes=(("dog", (0.05, 0.3, 0.5, 0.95)), ("mug", (0.55, 0.5, 0.95, 0.95)))),
        sampler=resolve_settings("cones2", steps=2), seeds=(1, 2), name="beach",
    )
    base.update(changes)
    return Composition(**base)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ---------------------------------------------------------------------------- the value and its file


def test_toml_dict_round_trip(tmp_path):
    (tmp_path / "masks").mkdir()
    comp = composition(
        subjects=(SubjectSpec("dog", ref="dog-max", version=">=1,<3"), SubjectSpec("mug", file=str(tmp_path / "r" / "mug.safetensors"))),
        layout=LayoutSpec(boxes=(("dog", (0.0, 0.0, 0.5, 1.0)),), masks=(("mug", str(tmp_path / "masks" / "m.png")),),
                          weights=(("dog", 3.0, -5.0),)),
        negative_prompt="blurry", height=64, width=128, dtype="float32",
        sampler=resolve_settings("reference", steps=3, guidance_steps=2, self_recurrence=False),
    )
    path = comp.save(tmp_path / "beach.cones2.toml")
    text = path.read_text()
    assert 'file = "r/mug.safetensors"' in text and 'mug = "masks/m.png"' in text  # relative to the file
    assert Composition.load(path) == comp
    assert Composition.from_dict(json.loads(json.dumps(comp.to_dict()))) == comp


@pytest.mark.parametrize("text, field", [
    ('prompt = "a dog"\ncolour = 3\n', "colour: unknown field"),
    ('prompt = "a dog"\n[sampler]\nstep = 3\n', "sampler.step: unknown field"),
    ('prompt = "a dog"\n[layout]\nbox = 1\n', "layout.box: unknown field"),
    ('prompt = "a dog"\n[subjects]\ndog = { ref = "dog-max", version = "latest" }\n', "subjects.dog: bad version range"),
    ('prompt = "a dog"\n[subjects]\ndog = { rev = "x" }\n', "subjects.dog: unknown field 'rev'"),
    ('prompt = "a dog"\nseeds = [1, 1]\n', "seeds: a seed is given twice"),
    ('prompt = "a dog"\nheight = 65\n', "height: must be a positive multiple of 8"),
    ('prompt = "a dog"\nformat_version = 9\n', "format_version: 9 is not supported"),
    ('prompt = "a dog\n', "invalid TOML"),
])
def test_bad_composition_files_name_the_field(tmp_path, text, field):
    path = tmp_path / "x.cones2.toml"
    path.write_text(text)
    with pytest.raises(CompositionError, match=field.replace("(", r"\(")):
        Composition.load(path)
    refused("lock", path, code=2, text=field)
    refused("render", path, "-o", tmp_path / "out", code=2, text=field)
    refused("lock", "--check", path, code=2, text=field)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.cones2.toml"]  # no lock, no images


def test_init_writes_a_valid_commented_composition(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok("init", "beach")
    comp = Composition.load(tmp_path / "beach.cones2.toml")
    assert comp.name == "beach" and comp.sampler.preset == "cones2" and comp.layout is not None
    assert "# word (or word#N" in (tmp_path / "beach.cones2.toml").read_text()
    refused("init", "beach", code=2, text="already exists")


# ---------------------------------------------------------------------------- lock, render, re-render


def test_render_twice_and_from_png_are_bit_identical(tmp_path, dog_max):
    path = composition().save(tmp_path / "beach.cones2.toml")
    ok("render", path, "-o", tmp_path / "a")
    lock = read_lock(tmp_path / "beach.cones2.toml.lock")  # written by the first render
    assert [(s.name, s.version, s.sha256, s.positions) for s in lock.subjects] == [("dog-max", 1, dog_max.sha256(), (2,))]
    ok("render", path, "-o", tmp_path / "b")
    for seed in (1, 2):
        first, second = tmp_path / "a" / f"beach-{seed}.png", tmp_path / "b" / f"beach-{seed}.png"
        assert first.read_bytes() == second.read_bytes()
    assert not np.array_equal(pixels(tmp_path / "a" / "beach-1.png"), pixels(tmp_path / "a" / "beach-2.png"))
    assert (tmp_path / "a" / "contact-sheet.png").is_file()
    # the PNG holds the composition; rendering it again gives the same file bit for bit
    image = tmp_path / "a" / "beach-2.png"
    assert Composition.from_png(image) == Composition.load(path)
    record = json.loads(Image.open(image).text["cones2"])
    assert record["format"] == "cones2-image" and record["seed"] == 2
    assert record["resolved"]["subjects"]["dog"]["version"] == 1
    data = json.loads(ok("render", "--from-png", image, "-o", tmp_path / "c", "--json"))
    assert [Path(i["path"]).name for i in data["images"]] == ["beach-2.png"]
    assert (tmp_path / "c" / "beach-2.png").read_bytes() == image.read_bytes()
    # show-png prints it and saves it as TOML
    ok("show-png", image, "--save", tmp_path / "again.cones2.toml")
    assert Composition.load(tmp_path / "again.cones2.toml") == Composition.load(path)


def test_lock_pins_version_1_after_version_2_is_added(tmp_path, dog_max, demo_text_encoder, fp):
    from cones2.registry import open_catalogue

    path = composition(seeds=(5,)).save(tmp_path / "beach.cones2.toml")
    out = ok("lock", path)
    assert "dog-max@1" in out
    text = (tmp_path / "beach.cones2.toml.lock").read_text()
    assert text.startswith("# This file is generated by `cones2 lock`")
    ok("lock", path)
    assert (tmp_path / "beach.cones2.toml.lock").read_text() == text  # deterministic, unchanged
    ok("render", path, "-o", tmp_path / "v1")
    with open_catalogue() as cat:
        cat.add(residual(demo_text_encoder, fp, 1), "dog-max")  # version 2, the new latest
    ok("render", path, "-o", tmp_path / "again")
    assert (tmp_path / "again" / "beach-5.png").read_bytes() == (tmp_path / "v1" / "beach-5.png").read_bytes()
    assert json.loads(Image.open(tmp_path / "again" / "beach-5.png").text["cones2"])["resolved"]["subjects"]["dog"]["version"] == 1
    # --check and --locked say what moved; nothing is written
    refused("lock", "--check", path, code=14, text="subjects.dog: dog-max@1 -> dog-max@2")
    refused("render", "--locked", path, "-o", tmp_path / "locked", code=14, text="dog-max@1 -> dog-max@2")
    assert not (tmp_path / "locked").exists() and (tmp_path / "beach.cones2.toml.lock").read_text() == text
    # --upgrade re-resolves
    ok("lock", "--upgrade", path)
    assert read_lock(tmp_path / "beach.cones2.toml.lock").subjects[0].version == 2
    ok("lock", "--check", path)
    ok("render", "--locked", path, "-o", tmp_path / "v2")
    assert (tmp_path / "v2" / "beach-5.png").read_bytes() != (tmp_path / "v1" / "beach-5.png").read_bytes()


def test_version_range_and_upgrade_of_one_subject(tmp_path, dog_max, demo_text_encoder, fp):
    from cones2.registry import open_catalogue

    with open_catalogue() as cat:
        cat.add(residual(demo_text_encoder, fp, 1), "dog-max")
        cat.add(residual(demo_text_encoder, fp, 2), "dog-max")
        cat.add(residual(demo_text_encoder, fp, 3, "mug"), "mug-red")
    comp = composition(subjects=(SubjectSpec("dog", ref="dog-max", version="<3"), SubjectSpec("mug", ref="mug-red")))
    path = comp.save(tmp_path / "beach.cones2.toml")
    ok("lock", path)
    assert [s.ref for s in read_lock(str(path) + ".lock").subjects] == ["dog-max@2", "mug-red@1"]
    with open_catalogue() as cat:
        cat.add(residual(demo_text_encoder, fp, 4, "mug"), "mug-red")
    ok("lock", "--upgrade-subject", "dog", path)  # only dog is re-resolved: mug stays pinned
    assert [s.ref for s in read_lock(str(path) + ".lock").subjects] == ["dog-max@2", "mug-red@1"]
    ok("lock", "-P", "mug", path)
    assert [s.ref for s in read_lock(str(path) + ".lock").subjects] == ["dog-max@2", "mug-red@2"]
    bad = comp.to_toml().replace('version = "<3"', 'version = ">=7"')
    (tmp_path / "bad.cones2.toml").write_text(bad)
    refused("lock", tmp_path / "bad.cones2.toml", code=8, text="subjects.dog: no version of dog-max matches >=7")


def test_python_api_lock_and_render(tmp_path, dog_max, demo_text_encoder, fp):
    from cones2.registry import open_catalogue

    path = composition(seeds=(3,)).save(tmp_path / "beach.cones2.toml")
    comp = Composition.load(path)
    result = comp.lock(path)
    assert result.written and result.path == tmp_path / "beach.cones2.toml.lock"
    rendered = comp.render(tmp_path / "out", lock=path)
    assert [i.seed for i in rendered.images] == [3]
    assert Composition.from_png(rendered.images[0].path) == comp
    with open_catalogue() as cat:
        cat.add(residual(demo_text_encoder, fp, 1), "dog-max")  # version 2

    def version(result) -> int:
        return json.loads(Image.open(result.images[0].path).text["cones2"])["resolved"]["subjects"]["dog"]["version"]

    assert version(comp.render(tmp_path / "pinned", lock=path)) == 1  # the lock beside the file
    assert version(comp.render(tmp_path / "result", lock=result)) == 1  # the LockResult
    assert (tmp_path / "pinned" / "beach-3.png").read_bytes() == rendered.images[0].path.read_bytes()
    assert version(comp.render(tmp_path / "fresh")) == 2  # no lock: resolved afresh
    with pytest.raises(LockError, match="dog-max@1 -> dog-max@2"):
        comp.render(tmp_path / "refused", lock=path, locked=True)
    assert not (tmp_path / "refused").exists()


# ---------------------------------------------------------------------------- batches and processes


def test_batch_over_two_processes_renders_each_image_once(tmp_path, dog_max):
    first = composition(seeds=(1, 2)).save(tmp_path / "beach.cones2.toml")
    second = composition(seeds=(7,), name="park", prompt="a dog and a mug in the park").save(tmp_path / "park.cones2.toml")
    data = json.loads(ok("render", first, second, "-o", tmp_path / "split", "--num-processes", "2", "--json"))
    names = sorted(Path(i["path"]).name for i in data["images"])
    assert names == ["beach-1.png", "beach-2.png", "park-7.png"]
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == sorted([*names, "contact-sheet.png"])
    ok("render", first, second, "-o", tmp_path / "alone")  # one process, one model load
    for name in names:
        assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name
    # and each equals the image rendered alone with its seed (its own command, its own model load)
    for path, seed, name in ((first, 1, "beach-1.png"), (first, 2, "beach-2.png"), (second, 7, "park-7.png")):
        ok("render", path, "--seed", seed, "-o", tmp_path / f"single-{seed}", "--no-contact-sheet")
        assert np.array_equal(pixels(tmp_path / f"single-{seed}" / name), pixels(tmp_path / "split" / name)), name


def test_ranks_of_accelerate_launch_render_each_image_once(tmp_path, dog_max, monkeypatch):
    """Under `accelerate launch` (WORLD_SIZE/RANK set) each process renders its share, named as alone."""
    first = composition(seeds=(1, 2)).save(tmp_path / "beach.cones2.toml")
    second = composition(seeds=(7,), name="park", prompt="a dog and a mug in the park").save(tmp_path / "park.cones2.toml")
    ok("lock", first, second)  # the launcher's processes share the locks; none of them writes one
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        data = json.loads(ok("render", "--locked", first, second, "-o", tmp_path / "ranks", "--json"))
        shares.append(sorted(Path(i["path"]).name for i in data["images"]))
        assert data["contact_sheet"] is None  # no process sees the whole batch
    assert shares == [["beach-1.png", "park-7.png"], ["beach-2.png"]]
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("LOCAL_RANK")
    ok("render", first, second, "-o", tmp_path / "alone")
    names = sorted(p.name for p in (tmp_path / "ranks").iterdir())
    assert names == ["beach-1.png", "beach-2.png", "park-7.png"]
    for name in names:
        assert (tmp_path / "ranks" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name


def test_seeds_batched_equal_single_renders_bit_for_bit(tmp_path, dog_max):
    """--batch-size 3 renders the same pixels as three single renders (CPU batches go image by image)."""
    path = composition(seeds=(1, 2, 3)).save(tmp_path / "b.cones2.toml")
    ok("render", path, "-o", tmp_path / "batched", "--batch-size", "3", "--no-contact-sheet")
    for seed in (1, 2, 3):
        ok("render", path, "--seed", seed, "-o", tmp_path / f"single-{seed}", "--batch-size", "1")
    for seed in (1, 2, 3):
        a = pixels(tmp_path / "batched" / f"beach-{seed}.png")
        b = pixels(tmp_path / f"single-{seed}" / f"beach-{seed}.png")
        assert np.array_equal(a, b), seed
    assert not (tmp_path / "batched" / "contact-sheet.png").exists()


def test_contact_sheet_has_a_caption_under_each_image(tmp_path, dog_max):
    path = composition(seeds=(1, 2, 3)).save(tmp_path / "beach.cones2.toml")
    data = json.loads(ok("render", path, "-o", tmp_path / "out", "--json"))
    sheet = tmp_path / "out" / "contact-sheet.png"
    assert data["contact_sheet"] == str(sheet)
    grid = pixels(sheet)
    cell, caption = 192, 16
    assert grid.shape == (cell + caption, 3 * cell, 3)  # 3 thumbnails in a row, a caption strip under them
    for i, seed in enumerate((1, 2, 3)):
        image = Image.open(tmp_path / "out" / f"beach-{seed}.png").convert("RGB")
        assert image.size == (64, 64)
        thumb = np.asarray(image.resize((cell, cell), Image.Resampling.NEAREST))
        assert np.array_equal(grid[:cell, i * cell:(i + 1) * cell], thumb)
        strip = grid[cell:, i * cell:(i + 1) * cell]
        assert (strip < 128).any() and (strip == 255).mean() > 0.5, "caption text is written on white"
    # captions differ (name and seed): the strips are not all the same
    assert not np.array_equal(grid[cell:, :cell], grid[cell:, cell:2 * cell])


# ---------------------------------------------------------------------------- refusals


def test_render_refusals_are_one_line_and_write_nothing(tmp_path, dog_max, demo_text_encoder, cones2_home, fp):
    from cones2.registry import open_catalogue

    path = composition(seeds=(1,)).save(tmp_path / "beach.cones2.toml")
    out = tmp_path / "out"
    # unknown subject
    (tmp_path / "cat.cones2.toml").write_text(composition().to_toml().replace('dog = "dog-max"', 'dog = "no-such-dog"'))
    refused("render", tmp_path / "cat.cones2.toml", "-o", out, code=8, text="subjects.dog")
    assert not (tmp_path / "cat.cones2.toml.lock").exists()
    # a layout word that is not in the prompt
    (tmp_path / "w.cones2.toml").write_text(composition().to_toml().replace("mug = [", "cat = ["))
    refused("render", tmp_path / "w.cones2.toml", "-o", out, code=6, text="layout word 'cat'")
    # a residual file learned on another base model
    foreign = residual(demo_text_encoder, "0" * 64, 0).save(tmp_path / "foreign.safetensors")
    (tmp_path / "f.cones2.toml").write_text(composition().to_toml().replace('dog = "dog-max"', f'dog = {{ file = "{foreign}" }}'))
    refused("render", tmp_path / "f.cones2.toml", "-o", out, code=5, text="subjects.dog")
    # a lock with a subject entry removed
    ok("lock", path)
    lock_file = tmp_path / "beach.cones2.toml.lock"
    text = lock_file.read_text()
    start = text.index("[subjects.dog]")
    lock_file.write_text(text[:start] + text[text.index("[versions]"):])
    refused("render", path, "-o", out, code=14, text="no entry for subjects.dog")
    # a lock made for another base model
    lock_file.write_text(text.replace(text.split('fingerprint = "')[1].split('"')[0], "f" * 64, 1))
    refused("render", path, "-o", out, code=5, text="base_model")
    lock_file.write_text(text)
    # a tampered blob
    with open_catalogue() as cat:
        blob = cat.blob_path(dog_max.sha256())
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")
    refused("render", path, "-o", out, code=10, text="subjects.dog: blob sha256:")
    assert "is corrupt" in refused("render", "--locked", path, "-o", out, code=10)
    # a residual file that changed after the lock pinned it
    mine = residual(demo_text_encoder, fp, 5).save(tmp_path / "mine.safetensors")
    own = tmp_path / "own.cones2.toml"
    own.write_text(composition(seeds=(1,)).to_toml().replace('dog = "dog-max"', f'dog = {{ file = "{mine}" }}'))
    ok("lock", own)
    own_lock = (tmp_path / "own.cones2.toml.lock").read_text()
    residual(demo_text_encoder, fp, 6).save(mine)
    refused("render", "--locked", own, "-o", out, code=10, text="the lock pins")
    assert (tmp_path / "own.cones2.toml.lock").read_text() == own_lock
    # --locked with no lock at all: nothing is resolved into a new lock
    bare = composition(seeds=(1,), name="bare").save(tmp_path / "bare.cones2.toml")
    refused("render", "--locked", bare, "-o", out, code=14, text="bare.cones2.toml.lock: no lock")
    refused("lock", "--check", bare, code=14, text="no lock")
    assert not (tmp_path / "bare.cones2.toml.lock").exists()
    # a PNG without cones2 metadata
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    refused("render", "--from-png", tmp_path / "plain.png", "-o", out, code=2, text="no cones2 metadata")
    refused("show-png", tmp_path / "plain.png", code=2, text="no cones2 metadata")
    assert not out.exists()
    assert lock_file.read_text() == text


# ---------------------------------------------------------------------------- the reference's configs


def _reference_config(tmp_path: Path, demo_text_encoder, subject_list) -> Path:
    import torch

    (tmp_path / "residuals").mkdir()
    (tmp_path / "layouts").mkdir()
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(1, 32, generator=g), tmp_path / "residuals" / "dog.pt")
    torch.save(torch.randn(32, generator=g), tmp_path / "residuals" / "mug.pt")  # (hidden,) is accepted too
    layout = np.zeros((64, 64, 3), np.uint8)
    layout[8:56, 2:30] = (255, 0, 0)
    layout[30:60, 34:62] = (255, 192, 0)
    layout[0, 0] = (250, 0, 0)  # near red: an exact match leaves it out
    Image.fromarray(layout).save(tmp_path / "layouts" / "layout_example.png")
    config = [{
        "prompt": "a mug and a dog on the beach",
        "residual_dict": {"dog": "residuals/dog.pt", "mug": "residuals/mug.pt"},
        "color_context": {"255,192,0": ["mug", 2.5], "255,0,0": ["dog", 2.5]},
        "guidance_steps": 50, "guidance_weight": 0.08, "weight_negative": -1e8,
        "layout": "layouts/layout_example.png", "subject_list": subject_list,
    }]
    path = tmp_path / "inference.json"
    path.write_text(json.dumps(config))
    return path


def test_import_reference_config_and_render(tmp_path, demo_text_encoder):
    config = _reference_config(tmp_path, demo_text_encoder, [["mug", 2], ["dog", 5]])
    data = json.loads(ok("import-reference", config, "-o", tmp_path / "comps", "--json"))
    assert sorted(s["ref"] for s in data["subjects"]) == ["dog@1", "mug@1"]
    comp = Composition.load(tmp_path / "comps" / "inference.cones2.toml")
    assert comp.sampler.preset == "reference" and comp.sampler.colour_match == "exact"
    assert comp.sampler.guidance_steps == 50 and comp.layout.colours == (("255,192,0", "mug", 2.5), ("255,0,0", "dog", 2.5))
    assert {s.key: s.ref for s in comp.subjects} == {"dog": "dog@1", "mug": "mug@1"}
    built = comp.layout.build(64, 64, comp.sampler)
    assert not built.cells(64, 64)["dog"][0, 0]  # (250, 0, 0) is not (255, 0, 0)
    # render it (2 steps instead of the reference's 50, to stay fast)
    path = tmp_path / "comps" / "inference.cones2.toml"
    path.write_text(path.read_text().replace("guidance_steps = 50", "guidance_steps = 2\nsteps = 2"))
    ok("render", path, "-o", tmp_path / "out")
    record = json.loads(Image.open(tmp_path / "out" / "inference-0.png").text["cones2"])
    assert record["resolved"]["subjects"]["mug"]["positions"] == [2]
    assert record["resolved"]["subjects"]["dog"]["positions"] == [5]


def test_import_reference_refuses_a_subject_list_disagreement(tmp_path, demo_text_encoder):
    config = _reference_config(tmp_path, demo_text_encoder, [["mug", 2], ["dog", 4]])
    refused("import-reference", config, "-o", tmp_path / "comps", code=4,
            text="'dog' is at token 4 in the config, but cones2 finds it at [5]")
    assert not (tmp_path / "comps").exists()
    assert json.loads(ok("list", "--json")) in ([], {"subjects": []})


# ---------------------------------------------------------------------------- generate --save


def test_generate_save_writes_the_composition_it_rendered(tmp_path, dog_max):
    out = tmp_path / "g.png"
    data = json.loads(ok("generate", PROMPT, "--subject", "dog=dog-max", "--box", "dog=0.05,0.3,0.5,0.95",
                         "--steps", "2", "--seed", "4", "--num-images", "2", "-o", out,
                         "--save", tmp_path / "mine.cones2.toml", "--json"))
    assert data["images"] == [str(tmp_path / "g-0.png"), str(tmp_path / "g-1.png")]
    comp = Composition.load(tmp_path / "mine.cones2.toml")
    assert comp.seeds == (4, 5) and comp.sampler.steps == 2 and comp.name == "mine"
    assert comp.subjects == (SubjectSpec("dog", ref="dog-max"),)
    assert Composition.from_png(tmp_path / "g-1.png") == comp
    # the saved file renders the same images
    ok("render", tmp_path / "mine.cones2.toml", "-o", tmp_path / "again")
    assert np.array_equal(pixels(tmp_path / "again" / "mine-5.png"), pixels(tmp_path / "g-1.png"))


# ---------------------------------------------------------------------------- pinned subjects from a remote


def test_render_pulls_a_missing_pinned_subject_from_its_remote(hub_server, monkeypatch, tmp_path, fp):
    import uuid

    from cones2.registry import open_catalogue
    from cones2.registry.hub import add_remote, pull, push

    monkeypatch.setenv("HF_TOKEN", "dummy")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    namespace = f"team-{uuid.uuid4().hex[:8]}"

    def home(name: str) -> None:
        monkeypatch.setenv("CONES2_HOME", str(tmp_path / name))
        add_remote("team", namespace, hub_server.endpoint, default=True)

    home("a")
    rng = np.random.default_rng(0)
    from cones2.residual_file import make_residual

    with open_catalogue() as cat:
        cat.add(make_residual(rng.standard_normal((1, 32)).astype("float32"), "dog", [643], fp), "dog-max")
    push("dog-max")
    home("b")  # a team mate pulls it, locks and renders
    pull("dog-max@1")
    path = composition(seeds=(1,)).save(tmp_path / "beach.cones2.toml")
    ok("render", path, "-o", tmp_path / "b-out")
    lock = read_lock(str(path) + ".lock")
    assert lock.subjects[0].source == "remote" and lock.subjects[0].repo == f"{namespace}/dog-max"
    assert lock.subjects[0].commit
    home("c")  # a fresh machine with only the composition and its lock
    ok("render", "--locked", path, "-o", tmp_path / "c-out")
    assert (tmp_path / "c-out" / "beach-1.png").read_bytes() == (tmp_path / "b-out" / "beach-1.png").read_bytes()
    with open_catalogue() as cat:
        assert cat.resolve("dog-max@1").sha256 == lock.subjects[0].sha256
    # version 2 is pushed and pulled: the lock still renders version 1
    monkeypatch.setenv("CONES2_HOME", str(tmp_path / "a"))
    with open_catalogue() as cat:
        cat.add(make_residual(rng.standard_normal((1, 32)).astype("float32"), "dog", [643], fp), "dog-max")
    push("dog-max@2")
    monkeypatch.setenv("CONES2_HOME", str(tmp_path / "c"))
    assert pull("dog-max").version == 2
    with open_catalogue() as cat:
        assert cat.resolve("dog-max").version == 2  # the new latest, here
    lock_text = (tmp_path / "beach.cones2.toml.lock").read_text()
    ok("render", path, "-o", tmp_path / "after-pull")
    assert (tmp_path / "after-pull" / "beach-1.png").read_bytes() == (tmp_path / "b-out" / "beach-1.png").read_bytes()
    assert (tmp_path / "beach.cones2.toml.lock").read_text() == lock_text
    refused("lock", "--check", path, code=14, text="subjects.dog: dog-max@1 -> dog-max@2")
