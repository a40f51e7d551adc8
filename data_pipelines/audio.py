"""Audio decoding to mono 16 kHz float32, with every failure named as a `BadRecordError`."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

from data_pipelines.features import N_FFT, SAMPLE_RATE
from data_pipelines.validation import BadRecordError, Note, Reason


def load_audio(
    path: str,
    record: str,
    *,
    max_seconds: float,
    resample: bool = True,
    allow_stereo: bool = True,
) -> tuple[np.ndarray, frozenset[Note]]:
    """Decodes `path` (any format libsndfile reads).

    Args:
      path: audio file.
      record: name of the record, for error messages.
      max_seconds: longer audio is rejected rather than truncated.
      resample: resample other rates to 16 kHz (else reject them).
      allow_stereo: average channels to mono (else reject multi-channel audio).

    Returns:
      (samples,) float32 at 16 kHz, and the notes on fixes applied.

    Raises:
      BadRecordError: missing, corrupt, empty, non-finite, wrong rate, multi-channel or too long.
    """
    if not os.path.isfile(path):
        raise BadRecordError(record, Reason.MISSING_FILE, path)
    try:
        with sf.SoundFile(path) as f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            if frames / rate > max_seconds:  # Checked on the header, before decoding a long file.
                raise BadRecordError(record, Reason.TOO_LONG, f"{frames / rate:.2f} s > {max_seconds} s: {path}")
            audio = f.read(dtype="float32", always_2d=True)  # (samples, channels)
    except RuntimeError as e:  # sf.LibsndfileError is a RuntimeError
        raise BadRecordError(record, Reason.CORRUPT_AUDIO, f"{path}: {e}") from e
    if len(audio) * SAMPLE_RATE < N_FFT * rate:
        raise BadRecordError(record, Reason.EMPTY_AUDIO, f"{len(audio)} samples at {rate} Hz: {path}")
    notes = set()
    if channels > 1:
        if not allow_stereo:
            raise BadRecordError(record, Reason.STEREO, f"{channels} channels: {path}")
        notes.add(Note.STEREO_TO_MONO)
    audio = audio.mean(axis=1)
    if not np.isfinite(audio).all():
        raise BadRecordError(record, Reason.NON_FINITE, path)
    if rate != SAMPLE_RATE:
        if not resample:
            raise BadRecordError(record, Reason.SAMPLE_RATE, f"{rate} Hz != {SAMPLE_RATE} Hz: {path}")
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
        notes.add(Note.RESAMPLED)
    return audio, frozenset(notes)
