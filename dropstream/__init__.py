"""dropstream: privacy-preserving real-time anomaly detection on biosignal streams.

The first layer of the network runs on the user's device; a fresh random subset of its
activations is dropped for every window and only the survivors travel (over Kafka) to the
server, which runs the rest of the network. Method: Dong, Wu, Wei & Guo, "Dropping Activation
Outputs with Localized First-layer Deep Network for Enhancing User Privacy and Data Security",
IEEE TIFS 2018 (arXiv:1711.07520).
"""

from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

try:
    __version__ = version("dropstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]


def _check_one_checkout() -> None:
    """Refuse to mix two checkouts: this package found on ``sys.path`` (the current folder of
    ``python -m dropstream`` or pytest) while the layers (``dropstream.broker`` ...) come from
    another checkout's editable install. The CLI of one and the service of the other then
    disagree (a TypeError such as "unexpected keyword argument 'signer'", seen once in a test
    run with another checkout's environment)."""
    here = Path(__file__).resolve().parent.parent
    spec = find_spec("dropstream.broker")
    origin = None if spec is None else spec.origin
    if origin is not None and not Path(origin).resolve().is_relative_to(here):
        layers = Path(origin).resolve().parent.parent
        raise ImportError(
            f"dropstream would mix two checkouts: {here / 'dropstream'} with the layers of "
            f"{layers} (this Python has that one installed). Use the environment of {here}, "
            f"or run 'pip install -e .' in {here}"
        )


_check_one_checkout()
