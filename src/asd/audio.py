"""Loading WAV and FLAC clips into checked, mono float32 samples.

Every path into the system (training, evaluation, the CLI, the app) loads audio here,
so a bad file is refused the same way everywhere: with an :class:`AudioError` whose
message a person can act on, never a silent wrong answer. What is fixed on the way
(downmix to mono, resampling) is reported in :attr:`AudioClip.notes`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

# libsndfile's names of what users call WAV: plain RIFF WAVE, WAVE_FORMAT_EXTENSIBLE
# (multi-channel recorders, MIMII), RF64 and Sony Wave64 (files over 4 GB), and FLAC.
SUPPORTED_FORMATS = ("WAV", "WAVEX", "RF64", "W64", "FLAC")
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # libsndfile's subtypes that store IEEE floats
# A clip whose loudest sample is below -80 dBFS is silence (a 16-bit recording's last bit
# is -90 dBFS; the DCASE 2023 ToyCar clips peak at -18 dBFS or louder): a muted or
# unplugged microphone, which no detector can judge.
SILENCE_PEAK_DBFS = -80.0


class AudioError(ValueError):
    """A clip cannot be used: empty, not WAV/FLAC, truncated, silent, or holding NaN/Inf."""


def clip_problem(name, exc: Exception) -> str:
    """One line saying why clip ``name`` (a path or file name) cannot be used: an
    :class:`AudioError`'s own message (it starts with the file name), an ``OSError``'s
    reason (missing, a directory, unreadable), else ``"<name>: <message>"`` (e.g. a clip
    shorter than the model takes)."""
    if isinstance(exc, AudioError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{name}: {exc.strerror or exc}"
    return f"{name}: {exc}"


@dataclass
class AudioClip:
    """A decoded clip.

    Attributes
    ----------
    samples : np.ndarray [shape=(n_samples,), dtype=float32]
        Mono samples in [-1, 1].
    sample_rate : int
        Samples per second (Hz), after any resampling.
    name : str
        File name, for messages.
    notes : list of str
        What was changed on loading (downmix, resampling), for the user to see.
    """

    samples: np.ndarray
    sample_rate: int
    name: str
    notes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


def pcm_sha256(samples: np.ndarray) -> str:
    """SHA-256 (hex) of a clip's samples as the model takes them (float32, mono, model
    rate): the same recording gives the same hash whatever file it came in. Enrolment
    records it; monitoring identifies a clip by it and its path."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


def _wav_data_shortfall(data: bytes) -> int:
    """Bytes missing from a RIFF/WAVE file's ``data`` chunk (0 if complete or not WAV).

    libsndfile quietly reads whatever part of a truncated WAV is there, so the declared
    chunk size is checked against the bytes present. Streaming writers that leave the
    size as 0 or 0xFFFFFFFF declare nothing and pass.
    """
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return 0
    order = "<" if data[:4] == b"RIFF" else ">"
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack(order + "I", data[offset + 4 : offset + 8])
        if chunk_id == b"data":
            if size in (0, 0xFFFFFFFF):
                return 0
            return max(0, size - (len(data) - offset - 8))
        offset += 8 + size + (size & 1)
    return 0


def load_audio(
    source: str | Path | bytes | BinaryIO,
    sample_rate: int,
    name: str | None = None,
    max_seconds: float | None = None,
    channel: int | None = None,
) -> AudioClip:
    """Decode a WAV or FLAC clip to mono float32 at ``sample_rate``.

    Every WAV libsndfile reads is accepted: WAVE_FORMAT_EXTENSIBLE, RF64 and Wave64
    containers, integer PCM of any depth and 32/64-bit float.

    Parameters
    ----------
    source : str, Path, bytes or binary file object
        The clip: a path, its bytes (e.g. an upload) or an open binary file.
    sample_rate : int
        Rate the features expect (Hz). A clip at another rate is resampled with
        ``librosa.resample`` (soxr, high quality) and a note says so.
    name : str, optional
        Name for messages; defaults to the file name.
    max_seconds : float, optional
        Keep only the first ``max_seconds`` seconds of a longer clip (cut before
        resampling, so a long upload costs little) and say so in a note.

    Returns
    -------
    AudioClip
        ``samples`` has shape ``(n_samples,)``, dtype float32; several channels are
        averaged to one (noted).

    Raises
    ------
    AudioError
        Empty file; not a WAV/FLAC file (e.g. text renamed ``.wav``); a truncated file
        (header declares more samples than present); no samples; NaN or Inf samples;
        silence (peak below :data:`SILENCE_PEAK_DBFS`); ``channel`` not in the file.
    FileNotFoundError
        If ``source`` is a path that does not exist.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or path.name
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = source.read()
    name = name or "clip"
    if not data:
        raise _empty(name)
    try:
        with sf.SoundFile(io.BytesIO(data)) as info:  # one open for the header and the samples
            _check_format(info, name)
            samples = info.read(dtype="float32", always_2d=True)
            rate = info.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _unreadable(name, exc) from None
    missing = _wav_data_shortfall(data)
    if missing or (info.frames > 0 and len(samples) < info.frames):
        raise AudioError(
            f"{name}: the file is truncated (its header declares more audio than it holds); "
            "re-export or copy it again"
        )
    if samples.shape[0] == 0:
        raise AudioError(f"{name}: the file holds no audio samples")
    # Integer PCM (16/24/32-bit WAV, every FLAC) cannot hold NaN or Inf: only float
    # subtypes are scanned, which saves a pass over every ordinary clip.
    if info.subtype in FLOAT_SUBTYPES and not np.isfinite(samples).all():
        raise AudioError(f"{name}: the audio holds NaN or infinite sample values")
    notes = []
    n_channels = samples.shape[1]
    if channel is not None and n_channels > 1:  # a mono file has only the one
        if not 1 <= channel <= n_channels:
            raise AudioError(f"{name}: channel {channel} was asked for, but the file has {n_channels} "
                             "channels (numbered from 1)")
        samples = samples[:, channel - 1 : channel]
        notes.append(f"used channel {channel} of {n_channels}")
    if max_seconds is not None and len(samples) > max_seconds * rate:
        notes.append(f"checked the first {max_seconds:g} s of {len(samples) / rate:.1f} s (longer clips are cut)")
        samples = samples[: int(max_seconds * rate)]
    peak = float(max(samples.max(), -samples.min()))  # = abs().max() without a temporary copy
    if peak <= 10 ** (SILENCE_PEAK_DBFS / 20):
        level = "-inf" if peak == 0 else f"{20 * np.log10(peak):.0f}"
        raise AudioError(
            f"{name}: the clip is silent (loudest sample at {level} dBFS, below {SILENCE_PEAK_DBFS:g} dBFS); "
            "check that the microphone is connected and not muted"
        )
    if samples.shape[1] > 1:
        notes.append(f"downmixed {samples.shape[1]} channels to mono (their average; one channel can be chosen instead)")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    mono = np.ascontiguousarray(mono)
    if rate != sample_rate:
        import librosa  # only here: resampling is the exception, keep plain loads light

        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
        mono = mono.astype(np.float32, copy=False)
        # The shipped default model ignores the top of the band that resamplers soften
        # (asd robustness); the note says what was done, for models that do not.
        notes.append(f"resampled from {rate} Hz to {sample_rate} Hz, the model's sample rate")
    return AudioClip(samples=mono, sample_rate=sample_rate, name=name, notes=notes)


def _empty(name: str) -> AudioError:
    return AudioError(f"{name}: the file is empty (0 bytes)")


def _unreadable(name: str, exc: Exception) -> AudioError:
    return AudioError(f"{name}: not a readable WAV or FLAC file ({_short(exc)})")


def _check_format(info: sf.SoundFile, name: str) -> None:
    if info.format not in SUPPORTED_FORMATS:
        raise AudioError(f"{name}: {info.format_info} is not supported; upload WAV or FLAC")


def check_header(path: str | Path) -> None:
    """Refuse, from its header alone, a file :func:`load_audio` would refuse as empty, not
    audio or not WAV/FLAC (the same messages), without reading its samples: the CLI
    answers a wrong file in a fraction of a second, before loading a model.

    Raises
    ------
    AudioError
        Empty, not readable by libsndfile, or another format.
    OSError
        Missing, a directory, or unreadable.
    """
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    with open(path, "rb") as handle:  # missing or unreadable: the OS's own error
        if not handle.read(1):
            raise _empty(name)
        handle.seek(0)
        try:
            with sf.SoundFile(handle) as info:
                _check_format(info, name)
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise _unreadable(name, exc) from None


def channel_count(data: bytes) -> int | None:
    """Channels of a clip given as bytes, from its header; None if libsndfile cannot read it
    (:func:`load_audio` then says why)."""
    try:
        return sf.info(io.BytesIO(data)).channels
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None


def _short(exc: Exception) -> str:
    """libsndfile's reason without the BytesIO object repr it includes."""
    text = str(exc)
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text
