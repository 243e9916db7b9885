"""Library chatter that is not for cones2's users, silenced in one place.

* transformers logs, on import, that ``CLIPImageProcessor`` and ``SiglipImageProcessor``
  fall back to PIL because torchvision is not installed; cones2 never uses them. Only
  that notice is dropped (a filter on the logger that emits it), nothing else.
* transformers draws "Loading weights" and "Writing model shards" bars for the tiny
  text encoders cones2 loads and writes; :func:`no_progress_bars` hides them for a block.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

_TORCHVISION_NOTICE = "requires torchvision (not installed)"


def _not_torchvision_notice(record: logging.LogRecord) -> bool:
    return _TORCHVISION_NOTICE not in str(record.msg)


def install_filters() -> None:
    """Drop transformers' torchvision fallback notice (idempotent; needs no transformers import)."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if _not_torchvision_notice not in logger.filters:
        logger.addFilter(_not_torchvision_notice)


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off inside the block, restored after it."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
