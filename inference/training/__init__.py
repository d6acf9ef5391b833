"""Training the split network: a supervised classifier and an unsupervised novelty model.

Python API::

    from dropstream.inference.training import TrainConfig, train_classifier, train_novelty
    model = train_classifier(X, y, TrainConfig(width=256, keep=64), sfreq=256.0)
    model.predict(X_test)            # labels, each window with a fresh keep mask
    model.save("scp1.dsb", model_id="scp1")

    novelty = train_novelty(X_normal, TrainConfig(keep=64), sfreq=1000.0)
    novelty.score(X)                 # anomaly score, higher = more anomalous

``X`` are raw windows ``(N, C, T)`` in stream units. Unless ``prefiltered=True`` (windows cut from
a recording that :func:`dropstream.local_encoder.preprocessing.filter_signal` already filtered as
one stream) each window is causally filtered on its own. Normalisation statistics are fitted on the
training windows only. Everything is seeded: the same inputs and config give the same model.

Modules: :mod:`.config` (:class:`TrainConfig`, the one place of the defaults), :mod:`.fit` (the
steps both trainers share: checks, seeding, building, fitting), :mod:`.classifier`,
:mod:`.novelty` (Deep SVDD) and :mod:`.trained` (:class:`TrainedModel` and :func:`finish`, the
last step of both).
"""

from dropstream.inference.training.classifier import train_classifier
from dropstream.inference.training.config import TrainConfig, TrainingError, default_pool
from dropstream.inference.training.novelty import CALIBRATION_LEVELS, train_novelty
from dropstream.inference.training.trained import TrainedModel

__all__ = [
    "CALIBRATION_LEVELS",
    "TrainConfig",
    "TrainedModel",
    "TrainingError",
    "default_pool",
    "train_classifier",
    "train_novelty",
]
