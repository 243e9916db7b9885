"""Issue 14: random and mutated residual files, manifests and layouts never give a traceback.

Each parser either returns a valid object or raises one of cones2's typed errors; a
mutated file is never accepted unless it still satisfies every check of the format.
"""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cones2.errors import Cones2Error

FP = "ab" * 32
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _good() -> bytes:
    from cones2.residual_file import make_residual

    return make_residual(np.linspace(-1, 1, 64, dtype="float32").reshape(2, 32), "dog", [10, 11], FP, {"k": [1, 2]}).to_bytes()


GOOD = _good()


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_residual_parser(data: bytes) -> None:
    from cones2.residual_file import parse_residual

    with pytest.raises(Cones2Error):
        parse_residual(data, "random")


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_residuals_are_refused_or_still_valid(edits: list[tuple[int, int]]) -> None:
    from cones2.residual_file import parse_residual

    data = bytearray(GOOD)
    for pos, value in edits:
        data[pos] = value
    try:
        parsed = parse_residual(bytes(data), "mutated")
    except Cones2Error:
        return
    # accepted: it must still be a well-formed residual that round-trips
    assert parsed.residual.shape[0] == len(parsed.token_ids) and np.isfinite(parsed.residual).all()
    assert parsed.to_bytes() == parse_residual(parsed.to_bytes(), "again").to_bytes()


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["__metadata__", "residual", "x"]), JSONISH, max_size=3))
def test_random_headers_are_refused(header: dict) -> None:
    from cones2.residual_file import parse_residual

    raw = json.dumps(header).encode()
    with pytest.raises(Cones2Error):
        parse_residual(struct.pack("<Q", len(raw)) + raw, "header")


MANIFEST = {
    "format": "cones2.subject", "format_version": 1, "name": "dog", "version": 1, "sha256": "cd" * 32, "size": 10,
    "dtype": "float32", "shape": [1, 32], "word": "dog", "token_ids": [643], "base_fingerprint": FP,
}


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(MANIFEST)), JSONISH, max_size=6), st.binary(max_size=64))
def test_mutated_manifests_never_crash(changes: dict, junk: bytes) -> None:
    from cones2.registry.hub.manifest import parse_manifest

    for data in (json.dumps({**MANIFEST, **changes}).encode(), junk):
        with contextlib.suppress(Cones2Error):
            parse_manifest(data, "hub")


@SETTINGS
@given(
    st.lists(st.text(max_size=12), max_size=3),
    st.lists(st.text(max_size=20), max_size=3),
    st.one_of(st.floats(-1e6, 1e6), st.sampled_from([float("nan"), float("inf"), -1.0])),
)
def test_random_layouts_never_crash(boxes: list[str], colours: list[str], tolerance: float) -> None:
    from cones2.sampler.layout import Layout, parse_box, parse_colour

    for text in boxes:
        with contextlib.suppress(Cones2Error):
            parse_box(text)
    for text in colours:
        with contextlib.suppress(Cones2Error):
            parse_colour(text)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:4] = (255, 0, 0)
    with contextlib.suppress(Cones2Error):
        Layout.from_colour_image(image, {c: "dog" for c in colours} or {"1,2,3": "dog"}, tolerance=tolerance)
