"""cones2 studio through its HTTP API (no browser): pages, library, render queue, errors, save/open.

The browser test (tests/test_studio_browser.py) drives the same server through Chromium.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _registry_helpers import fingerprint_of, write_residual
from PIL import Image
from test_bad_input import refused

PROMPT = "a dog on the beach"


def call(server: Any, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url.rstrip("/") + path, data=data, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            raw, status, kind = res.read(), res.status, res.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raw, status, kind = exc.read(), exc.code, exc.headers.get("Content-Type", "")
    return status, (json.loads(raw) if kind.startswith("application/json") else raw)


def wait(server: Any, job: dict[str, Any]) -> dict[str, Any]:
    jobs = server.RequestHandlerClass.studio.jobs
    assert jobs.wait(jobs.get(job["id"]), 120), f"job {job['id']} did not finish"
    return call(server, f"/api/jobs/{job['id']}")[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory):
    """One server for the module, so the pipeline loads once; the catalogue it reads is each
    test's own (CONES2_HOME is read per request)."""
    from cones2.studio import serve_in_thread

    server, app, thread = serve_in_thread(folder=tmp_path_factory.mktemp("work"), port=0)
    yield server
    server.shutdown()
    server.server_close()
    app.close()
    thread.join(5)


@pytest.fixture()
def dog(tmp_path: Path, demo_model_dir: Path) -> str:
    from cones2.registry import open_catalogue

    path = write_residual(tmp_path / "dog.safetensors", fingerprint_of(demo_model_dir), word="dog")
    with open_catalogue() as cat:
        cat.add(str(path), "dog-max")
    return "dog-max"


def page(**kw: Any) -> dict[str, Any]:
    base = {"prompt": PROMPT, "subjects": {"dog": "dog-max"}, "boxes": {"dog": [0.1, 0.2, 0.6, 0.9]},
            "weights": {}, "preset": "reference", "steps": 2, "guidance_weight": 0.08, "seed": 3, "size": 64,
            "name": "beach"}
    return {**base, **kw}


def test_page_and_state(studio: Any, demo_model_dir: Path) -> None:
    status, html = call(studio, "/")
    assert status == 200 and b'<canvas id="canvas"' in html and b"/static/app.js" in html
    status, js = call(studio, "/static/app.js")
    assert status == 200 and b"/api/render" in js
    status, state = call(studio, "/api/state")
    assert status == 200
    assert state["model"]["is_demo"] and state["model"]["fingerprint"] == fingerprint_of(demo_model_dir)
    assert set(state["presets"]) == {"reference", "cones2"} and len(state["palette"]) >= 4
    status, err = call(studio, "/static/../server.py")
    assert status == 404 and "no such page" in err["error"]


def test_library_lists_versions_tags_and_compatibility(studio: Any, dog: str, tmp_path: Path) -> None:
    from cones2.registry import open_catalogue

    other = write_residual(tmp_path / "cat.safetensors", "f" * 64, word="cat", seed=1)
    with open_catalogue() as cat:
        cat.add(str(write_residual(tmp_path / "dog2.safetensors", fingerprint_of_model(), word="dog", seed=2)), "dog-max")
        cat.tag("dog-max@1", "stable")
        cat.add(str(other), "cat-grey", check_base=False)
    status, data = call(studio, "/api/subjects")
    assert status == 200
    subject = {s["name"]: s for s in data["subjects"]}["dog-max"]
    assert [v["version"] for v in subject["version_list"]] == [1, 2]
    assert subject["version_list"][0]["tags"] == ["stable"] and subject["compatible"]
    assert all(v["compatible"] for v in subject["version_list"])
    grey = {s["name"]: s for s in data["subjects"]}["cat-grey"]
    assert not grey["compatible"] and grey["version_list"][0]["word"] == "cat"
    status, found = call(studio, "/api/subjects?q=dog")
    assert [s["name"] for s in found["subjects"]] == ["dog-max"]
    status, none = call(studio, "/api/subjects?q=zebra")
    assert none["subjects"] == []


def fingerprint_of_model() -> str:
    from cones2.base_model import model_info

    return model_info().fingerprint


def test_words_offer_only_words_of_the_prompt_with_subjects(studio: Any, dog: str) -> None:
    _, data = call(studio, "/api/words?prompt=" + urllib.request.quote("A Dog and a cat on the beach"))
    assert [w["word"] for w in data["words"]] == ["dog"]
    assert data["words"][0]["subjects"][0]["ref"] == "dog-max"
    _, data = call(studio, "/api/words?prompt=" + urllib.request.quote("a cat on the beach"))
    assert data["words"] == []


def test_render_shows_image_layout_and_attention_with_progress(studio: Any, dog: str, monkeypatch: pytest.MonkeyPatch) -> None:
    status, job = call(studio, "/api/render", page())
    assert status == 202 and job["status"] in ("queued", "running", "done")
    job = wait(studio, job)
    assert job["status"] == "done", job["error"]
    assert job["step"] == job["total"] == 4  # 2 steps + 2 self-recurrence passes
    result = job["result"]
    status, png = call(studio, result["image"])
    assert status == 200
    image = Image.open(io.BytesIO(png))
    assert image.size == (64, 64)
    record = json.loads(image.text["cones2"])
    assert record["composition"]["subjects"] == {"dog": "dog-max"} and record["seed"] == 3
    assert record["composition"]["layout"]["boxes"] == {"dog": [0.1, 0.2, 0.6, 0.9]}
    assert {k: (s["name"], s["version"]) for k, s in result["resolved"]["subjects"].items()} == {"dog": ("dog-max", 1)}
    assert call(studio, result["layout"])[0] == 200
    assert set(result["attention"]) == {"dog"} and call(studio, result["attention"]["dog"])[0] == 200
    # the same design renders the same pixels again, on the pipeline the first render loaded
    from cones2.sampler.pipeline import Cones2Pipeline

    loads = []
    monkeypatch.setattr(Cones2Pipeline, "from_pretrained", lambda *a, **k: loads.append(a) or 1 / 0)
    again = wait(studio, call(studio, "/api/render", page())[1])
    assert again["status"] == "done" and loads == [], again["error"]
    png2 = call(studio, again["result"]["image"])[1]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png2))), np.asarray(image))


@pytest.mark.parametrize("design, status, text", [
    (page(subjects={"dog": "no-such-dog"}), 404, "subjects.dog: unknown subject 'no-such-dog'"),
    (page(subjects={"cat": "dog-max"}), 400, "subject 'cat': the word does not occur in the prompt"),
    (page(boxes={"dog": [0.6, 0.2, 0.1, 0.9]}), 400, "box 'dog'"),
    (page(prompt=""), 400, "prompt: type a prompt first"),
    (page(steps="many"), 400, "steps: 'many' is not a number"),
    (page(preset="fast"), 400, "preset 'fast'"),
    (page(size=65), 400, "size 65"),
])
def test_render_refusals_are_one_line(studio: Any, dog: str, design: dict, status: int, text: str) -> None:
    jobs = studio.RequestHandlerClass.studio.jobs
    before = len(jobs.all())
    got, err = call(studio, "/api/render", design)
    assert got == status and text in err["error"], err
    assert "\n" not in err["error"] and "Traceback" not in err["error"]
    assert len(jobs.all()) == before  # nothing queued


def test_subject_of_another_base_model_is_refused(studio: Any, tmp_path: Path) -> None:
    from cones2.registry import open_catalogue

    with open_catalogue() as cat:
        cat.add(str(write_residual(tmp_path / "d.safetensors", "f" * 64, word="dog")), "dog-other", check_base=False)
    got, err = call(studio, "/api/render", page(subjects={"dog": "dog-other"}))
    assert got == 400 and err["kind"] == "BaseModelMismatchError", err
    assert err["error"].startswith("subjects.dog: dog-other@1 was learned on base model ffffffffffff") and "\n" not in err["error"]


def test_a_second_render_is_queued_not_lost() -> None:
    from cones2.studio.jobs import JobQueue

    q = JobQueue()
    release, started = threading.Event(), threading.Event()

    def slow(progress: Any) -> str:
        started.set()
        progress(1, 2, "half")
        release.wait(10)
        return "first"

    first = q.submit("render", "one", slow)
    started.wait(10)
    second = q.submit("render", "two", lambda progress: "second")
    third = q.submit("render", "three", lambda progress: 1 / 0)
    assert q.describe(first)["status"] == "running" and q.describe(first)["step"] == 1
    assert q.describe(second)["status"] == "queued" and q.describe(second)["position"] == 1
    assert q.describe(third)["position"] == 2
    release.set()
    assert q.wait(third, 10)
    assert (first.result, second.result) == ("first", "second")
    assert third.error == "internal error: ZeroDivisionError: division by zero"
    q.stop()


def test_save_writes_a_composition_that_opens_to_the_same_design(studio: Any, dog: str) -> None:
    import tomllib

    status, out = call(studio, "/api/save", {"design": page(weights={"dog": 3.0})})
    assert status == 200
    path = Path(out["path"])
    assert out["lock"] == str(path) + ".lock" and Path(out["lock"]).is_file()
    assert "dog-max" in Path(out["lock"]).read_text()
    assert path == studio.RequestHandlerClass.studio.folder / "beach.cones2.toml"
    data = tomllib.loads(path.read_text())
    assert data["format"] == "cones2-composition" and data["prompt"] == PROMPT and data["seeds"] == [3]
    assert data["subjects"] == {"dog": "dog-max"} and data["layout"]["boxes"]["dog"] == [0.1, 0.2, 0.6, 0.9]
    assert data["layout"]["weights"] == {"dog": 3.0} and data["sampler"] == {"preset": "reference", "steps": 2}
    status, opened = call(studio, "/api/open", {"filename": path.name, "data": base64.b64encode(path.read_bytes()).decode()})
    assert status == 200 and opened["design"] == {**page(weights={"dog": 3.0}), "negative_prompt": None}
    status, by_path = call(studio, "/api/open", {"path": path.name})
    assert by_path == opened


def test_open_a_rendered_png_restores_its_design(studio: Any, dog: str) -> None:
    job = wait(studio, call(studio, "/api/render", page(seed=5))[1])
    png = call(studio, job["result"]["image"])[1]
    status, opened = call(studio, "/api/open", {"filename": "x.png", "data": base64.b64encode(png).decode()})
    assert status == 200 and opened["design"]["seed"] == 5 and opened["design"]["boxes"] == {"dog": [0.1, 0.2, 0.6, 0.9]}


def test_open_refuses_foreign_files_in_one_line(studio: Any) -> None:
    plain = io.BytesIO()
    Image.new("RGB", (4, 4)).save(plain, format="PNG")
    for name, data, text in [
        ("plain.png", plain.getvalue(), "plain.png: no cones2 metadata in this image"),
        ("x.toml", b"prompt = [", "neither a PNG nor a composition file"),
        ("x.toml", b'format = "other"\nprompt = "a dog"', "not a cones2 composition"),
    ]:
        status, err = call(studio, "/api/open", {"filename": name, "data": base64.b64encode(data).decode()})
        assert status == 400 and text in err["error"] and "\n" not in err["error"], err
    status, err = call(studio, "/api/open", {"filename": "x", "data": "%%%"})
    assert status == 400 and "not base64" in err["error"]
    status, err = call(studio, "/api/save", {"design": page(name="../escape")})
    assert status == 400 and "name '../escape'" in err["error"]


def test_pull_from_a_remote_runs_as_a_job_with_progress(studio: Any, hub_server: Any, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    from _hub_helpers import new_namespace

    from cones2.registry import hub, open_catalogue

    monkeypatch.setenv("HF_TOKEN", "dummy")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    hub.add_remote("team", new_namespace(), hub_server.endpoint, default=True)
    with open_catalogue() as cat:
        cat.add(str(write_residual(tmp_path / "d.safetensors", fingerprint_of_model(), word="dog")), "dog-max")
    hub.push("dog-max")
    with open_catalogue() as cat:
        cat.remove("dog-max@1")
    job = wait(studio, call(studio, "/api/pull", {"remote": "team", "ref": ""})[1])
    assert job["status"] == "done", job["error"]
    assert job["step"] == job["total"] == 1
    assert [(r["name"], r["status"]) for r in job["result"]["results"]] == [("dog-max", "pulled")]
    _, data = call(studio, "/api/subjects")
    assert [s["name"] for s in data["subjects"]] == ["dog-max"]
    job = wait(studio, call(studio, "/api/pull", {"remote": "nowhere", "ref": "dog-max"})[1])
    assert job["status"] == "error" and "nowhere" in job["error"] and "\n" not in job["error"]


def test_cli_refuses_a_bad_port_and_a_busy_port() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        refused("studio", "--port", str(port), code=2, text=f"cannot listen on 127.0.0.1:{port}")
    refused("studio", "--port", "70000", code=2, text="--port 70000: use 0 (a free port) to 65535")
    refused("studio", "--host", "no-such-host.invalid", "--port", "0", code=2, text="cannot listen on no-such-host.invalid")
