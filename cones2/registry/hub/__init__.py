"""Team subject libraries on the Hugging Face Hub: remotes, push, pull, search.

>>> from cones2.registry.hub import add_remote, push, pull    # doctest: +SKIP
>>> add_remote("team", "acme-vision", default=True)
>>> push("dog-max")                 # every local version the remote lacks
>>> pull("dog-max@3")               # acme-vision/dog-max, tag v3, into the catalogue
>>> pull_all("acme-vision")         # mirror a whole library

One Hub model repo per subject (``NAMESPACE/NAME``), one commit plus one ``vN`` tag
per version; see :mod:`.manifest` for the files, :mod:`.target` for the reference
rules, :mod:`.pull` and :mod:`.push` for the guarantees.
"""

from .client import HubClient, is_offline
from .manifest import Manifest, model_card, parse_manifest
from .pull import PullResult, pull, pull_all
from .push import PushResult, push
from .remotes import Remote, add_remote, get_remote, list_remotes, remove_remote
from .search import RemoteSubject, search_remote
from .target import Target, parse_target

__all__ = [
    "HubClient",
    "Manifest",
    "PullResult",
    "PushResult",
    "Remote",
    "RemoteSubject",
    "Target",
    "add_remote",
    "get_remote",
    "is_offline",
    "list_remotes",
    "model_card",
    "parse_manifest",
    "parse_target",
    "pull",
    "pull_all",
    "push",
    "remove_remote",
    "search_remote",
]
