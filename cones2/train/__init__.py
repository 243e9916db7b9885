"""Learning a subject: fine-tune the text encoder on a few images, keep the residual.

>>> from cones2.train import TrainConfig, train_subject
>>> result = train_subject(["photos/"], "dog", "dog-max",                 # doctest: +SKIP
...                        config=TrainConfig(steps=4000, resolution=768))
>>> result.ref                                                          # doctest: +SKIP
'dog-max@1'

See :mod:`cones2.train.loop` for the run, :mod:`cones2.train.loss` for the loss and
:mod:`cones2.train.data` for the image rules (resize/crop).
"""

from .config import TrainConfig
from .loop import TrainResult, TrainStep, train_subject

__all__ = ["TrainConfig", "TrainResult", "TrainStep", "train_subject"]
