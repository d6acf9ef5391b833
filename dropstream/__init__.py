"""dropstream: privacy-preserving real-time anomaly detection on biosignal streams.

The first layer of the network runs on the user's device; a fresh random subset of its
activations is dropped for every window and only the survivors travel (over Kafka) to the
server, which runs the rest of the network. Method: Dong, Wu, Wei & Guo, "Dropping Activation
Outputs with Localized First-layer Deep Network for Enhancing User Privacy and Data Security",
IEEE TIFS 2018 (arXiv:1711.07520).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dropstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
