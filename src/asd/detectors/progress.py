"""Training progress in words: one line per epoch of a neural detector, and a line before
and after the fit of a classical one, through the ``log`` callback every detector's
``fit`` takes (``print`` in ``asd train``; ``None`` in ``asd benchmark``, which stays quiet).

Imports no TensorFlow itself (the classical detectors use it too); :func:`keras_epoch_log`
imports Keras when called.
"""

from __future__ import annotations

import time
from contextlib import contextmanager


def epoch_line(
    epoch: int,
    epochs: int,
    loss: float,
    seconds: float,
    val_loss: float | None = None,
    network: tuple[int, int] | None = None,
    extra: str = "",
) -> str:
    """One epoch's progress line, e.g. ``"epoch 2/20: loss 0.8123, val_loss 0.9011, 3.4 s"``
    or ``"network 1/3, epoch 2/16: loss 4.1034, AdaCos scale 9.84, 51.2 s"``.

    Parameters
    ----------
    epoch, epochs : int
        The epoch just finished, counted from 1, and the epochs configured
        (``training.epochs``; early stopping may end before).
    loss : float
        Mean training loss of the epoch (the detector's own loss and units).
    seconds : float
        Wall time of the epoch in s (training, validation and per-epoch callbacks).
    val_loss : float, optional
        Loss on the held-out normal clips, for detectors that hold some out.
    network : (int, int), optional
        Which network of an ensemble, counted from 1, of how many.
    extra : str
        More figures of the epoch, appended after the losses.
    """
    figures = [f"loss {loss:.4f}"] + ([f"val_loss {val_loss:.4f}"] if val_loss is not None else []) + ([extra] if extra else [])
    where = f"network {network[0]}/{network[1]}, " if network else ""
    return f"{where}epoch {epoch}/{epochs}: {', '.join(figures)}, {seconds:.1f} s"


def keras_epoch_log(log, epochs: int):
    """A Keras callback that sends :func:`epoch_line` of every epoch of ``Model.fit`` to
    ``log`` (with ``loss`` and, when ``fit`` has validation data, ``val_loss`` from Keras's
    epoch logs). Put it last in the callback list, so its seconds include the others'
    epoch-end work (such as the per-epoch evaluation of :mod:`asd.tensorboard_logging`).

    Returns ``None`` when ``log`` is ``None`` (nothing to report to)."""
    if log is None:
        return None
    import keras

    started = [0.0]

    def begin(epoch, logs=None):
        started[0] = time.perf_counter()

    def end(epoch, logs=None):
        logs = logs or {}
        log(epoch_line(epoch + 1, epochs, float(logs.get("loss", float("nan"))), time.perf_counter() - started[0],
                       val_loss=float(logs["val_loss"]) if "val_loss" in logs else None))

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)


@contextmanager
def fitting(log, what: str, on: str = ""):
    """Log ``"fitting <what> on <on> ..."`` on entry and ``"fitted <what> in 1.2 s"`` (wall
    time) on a normal exit, nothing when ``log`` is ``None``; for fits without epochs
    (scikit-learn). An exception inside passes through with no "fitted" line."""
    if log:
        log(f"fitting {what}{f' on {on}' if on else ''} ...")
    started = time.perf_counter()
    yield
    if log:
        log(f"fitted {what} in {time.perf_counter() - started:.1f} s")
