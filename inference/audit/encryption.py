"""The alternative to dropping: the same first layer evaluated under homomorphic encryption.

With CKKS (TenSEAL) the device encrypts the whole window, the server multiplies the ciphertext
by the plain weight matrix and adds the bias, and sends the encrypted pre-activations back: the
server learns nothing about the window (semantic security), but the device must then decrypt
and apply the activation itself, and every window costs a ciphertext up and down and a slow
vector-matrix product on the server. This module measures those costs per window, beside the
dropstream device, which computes the layer locally and sends ``K`` indices and values.

Security parameters: ``poly_modulus_degree`` is the smallest power of two whose ``N/2`` slots
hold the window and the output (8192, 16384 or 32768), coefficient moduli ``[60, 40, 40, 60]``
bits, scale ``2^40`` (128-bit security by the homomorphic encryption standard for these sizes).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from dropstream.errors import DropstreamError
from dropstream.local_encoder.first_layer import FirstLayer, draw_kept_units


class EncryptionError(DropstreamError):
    """A layer too large for the supported CKKS parameters, or TenSEAL missing."""


@dataclass(frozen=True)
class Cost:
    """Per-window cost of one way of computing the first layer.

    Attributes
    ----------
    method : str
    n_inputs, width : int
        ``C * T`` and ``m``.
    client_s : float
        Device time per window, seconds (encrypt [+ decrypt and activate], or local forward,
        drop and encode).
    bytes_up, bytes_down : int
        Bytes per window device -> server and server -> device.
    server_s : float
        Server time per window for the first layer, seconds (0 when the device computes it).
    setup_bytes : int
        One-off bytes per session (the public CKKS context with Galois keys), not per window.
    max_abs_error : float
        Largest error of the pre-activations against float64 numpy (CKKS is approximate).
    detail : str
    """

    method: str
    n_inputs: int
    width: int
    client_s: float
    bytes_up: int
    bytes_down: int
    server_s: float
    setup_bytes: int = 0
    max_abs_error: float = 0.0
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        """Plain dictionary for JSON."""
        return asdict(self)


def ckks_poly_degree(n_inputs: int, width: int) -> int:
    """Smallest supported ring dimension whose slots hold the window and the output."""
    for n in (8192, 16384, 32768):
        if n // 2 >= max(n_inputs, width):
            return n
    raise EncryptionError(
        f"a window of {n_inputs} inputs does not fit one CKKS ciphertext (at most 16384 slots); "
        "use a smaller window"
    )


def measure_encrypted(layer: FirstLayer, window: np.ndarray, repeats: int = 1) -> Cost:
    """Time the first layer of one window under CKKS, end to end, ``repeats`` times.

    The server computes ``W x + b`` on the encrypted window (TenSEAL vector-matrix product with
    the plain ``W.T``); the device encrypts, and afterwards decrypts and applies the activation.
    Times are medians over the repeats.
    """
    try:
        import tenseal as ts
    except ImportError as exc:  # pragma: no cover - tenseal is a bench dependency
        raise EncryptionError("TenSEAL is not installed: pip install 'dropstream[bench]'") from exc
    x = np.asarray(window, np.float64).reshape(-1)
    if x.size != layer.n_inputs:
        raise EncryptionError(f"window has {x.size} values, the layer takes {layer.n_inputs}")
    poly = ckks_poly_degree(layer.n_inputs, layer.width)
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly, coeff_mod_bit_sizes=[60, 40, 40, 60]
    )
    ctx.global_scale = 2.0**40
    ctx.generate_galois_keys()
    public = ctx.copy()
    public.make_context_public()
    setup_bytes = len(public.serialize(save_galois_keys=True))
    w_t = np.asarray(layer.dense_weight, np.float64).T.tolist()
    bias = np.asarray(layer.bias, np.float64).tolist()
    enc_s, srv_s, dec_s = [], [], []
    up = down = 0
    err = 0.0
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        blob_up = ts.ckks_vector(ctx, x.tolist()).serialize()
        enc_s.append(time.perf_counter() - t0)
        up = len(blob_up)
        t0 = time.perf_counter()
        server_vec = ts.ckks_vector_from(public, blob_up)
        out = server_vec.mm(w_t) + bias
        blob_down = out.serialize()
        srv_s.append(time.perf_counter() - t0)
        down = len(blob_down)
        t0 = time.perf_counter()
        z = np.asarray(ts.ckks_vector_from(ctx, blob_down).decrypt())
        layer.activate(z)
        dec_s.append(time.perf_counter() - t0)
        ref = np.asarray(layer.dense_weight, np.float64) @ x + np.asarray(layer.bias, np.float64)
        err = max(err, float(np.max(np.abs(z - ref))))
    return Cost(
        method="CKKS (TenSEAL)",
        n_inputs=layer.n_inputs,
        width=layer.width,
        client_s=float(np.median(enc_s) + np.median(dec_s)),
        bytes_up=up,
        bytes_down=down,
        server_s=float(np.median(srv_s)),
        setup_bytes=setup_bytes,
        max_abs_error=err,
        detail=(
            f"N={poly}, moduli [60,40,40,60], scale 2^40; encrypt {np.median(enc_s) * 1e3:.1f} ms,"
            f" decrypt+activate {np.median(dec_s) * 1e3:.1f} ms"
        ),
    )


def message_bytes(width: int, keep: int, value_dtype: str = "float16") -> int:
    """Bytes of one activation message as :func:`dropstream.broker.wire.encode_activation`
    writes it.

    Ids are those of a typical deployment (``model_id="scp1"``, a 12-character device id and a
    36-character LSL source id).
    """
    from dropstream.broker.wire import ActivationMessage, encode_activation

    msg = ActivationMessage(
        model_id="scp1",
        model_version=1,
        device_id="device-0001",
        stream_id="0" * 36,
        sequence=0,
        lsl_time=0.0,
        wall_time=0.0,
        sfreq=256.0,
        window_samples=896,
        hop_samples=896,
        width=width,
        indices=np.arange(keep, dtype=np.uint16 if width <= 65536 else np.uint32),
        values=np.ones(keep, np.float32),
    )
    return len(encode_activation(msg, value_dtype=value_dtype))


def measure_local(
    layer: FirstLayer,
    window: np.ndarray,
    keep: int,
    repeats: int = 50,
    value_dtype: str = "float16",
) -> Cost:
    """Time dropstream's device side for one window: forward, draw ``K`` units, round values."""
    x = np.asarray(window, np.float32)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        a = layer.forward(x.reshape(1, -1)[0])
        idx = draw_kept_units(rng, layer.width, keep)
        a[idx].astype(value_dtype).tobytes()
        times.append(time.perf_counter() - t0)
    return Cost(
        method="dropstream (local layer, K kept)",
        n_inputs=layer.n_inputs,
        width=layer.width,
        client_s=float(np.median(times)),
        bytes_up=message_bytes(layer.width, keep, value_dtype),
        bytes_down=0,
        server_s=0.0,
        detail=f"K={keep}, {value_dtype} values, uint16 indices",
    )
