"""Names, tags and the reference syntax."""

from __future__ import annotations

import pytest

from cones2.errors import InvalidNameError
from cones2.registry import Ref, parse_ref, validate_name, validate_tag


@pytest.mark.parametrize("name", ["dog", "dog-max", "a", "team/dog.v2", "0_x", "x" * 64, "ns/" + "y" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b/c", "Dog", "x" * 65, "x" * 200, "-a", ".a", "a b", "a..b", "/a", "a/", "ns//a", "é"])
def test_invalid_names(name):
    with pytest.raises(InvalidNameError):
        validate_name(name)


@pytest.mark.parametrize(
    "text, ref",
    [
        ("dog", Ref("dog")),
        ("dog@3", Ref("dog", version=3)),
        ("team/dog:stable", Ref("team/dog", tag="stable")),
        ("dog@sha256:0123456789ab", Ref("dog", digest="0123456789ab")),
    ],
)
def test_parse_ref(text, ref):
    assert parse_ref(text) == ref
    assert str(parse_ref(text)) == text


@pytest.mark.parametrize("text", ["dog@", "dog@0", "dog@-1", "dog@1.2", "dog@²", "dog:v²", "dog:", "dog:Bad", "dog@sha256:xyz", "dog@sha256:0123", "Dog@1", "a/b/c:x", "dog:12"])
def test_bad_refs(text):
    with pytest.raises(InvalidNameError):
        parse_ref(text)


def test_tags():
    assert validate_tag("stable") == "stable"
    for bad in ("", "Stable", "a/b", "7"):
        with pytest.raises(InvalidNameError):
            validate_tag(bad)
    assert validate_tag("v1beta") == "v1beta"
    assert parse_ref("dog-max:v3") == parse_ref("dog-max@3") == Ref("dog-max", version=3)
    with pytest.raises(InvalidNameError, match="reserved for versions"):
        validate_tag("v3")
