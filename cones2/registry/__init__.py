"""The subject registry: catalogue, content-addressed blob store, refs and tags.

>>> from cones2.registry import open_catalogue
>>> with open_catalogue() as cat:                       # doctest: +SKIP
...     cat.add("dog.safetensors", "dog-max")
...     record, residual = cat.load("dog-max:stable")

See :mod:`cones2.registry.catalogue` for the API and :mod:`cones2.registry.refs`
for the reference syntax.
"""

from .catalogue import Catalogue, SubjectSummary, VersionRecord, open_catalogue
from .names import validate_name, validate_tag
from .refs import Ref, parse_ref

__all__ = [
    "Catalogue",
    "Ref",
    "SubjectSummary",
    "VersionRecord",
    "open_catalogue",
    "parse_ref",
    "validate_name",
    "validate_tag",
]
