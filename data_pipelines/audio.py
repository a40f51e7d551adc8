"""Audio decoding to mono 16 kHz float32, with every failure named as a `BadRecordError`."""

from __future__ import annotations

import os
import struct

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
      BadRecordError: missing, corrupt, truncated, empty, non-finite, wrong rate, multi-channel or too long.
    """
    if not os.path.isfile(path):
        raise BadRecordError(record, Reason.MISSING_FILE, path)
    if missing := wav_bytes_missing(path):  # libsndfile reads a cut-off WAV as a shorter, complete one
        raise BadRecordError(record, Reason.TRUNCATED_AUDIO, f"{missing} bytes of its data chunk missing: {path}")
    try:
        with sf.SoundFile(path) as f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            if frames / rate > max_seconds:  # Checked on the header, before decoding a long file.
                raise BadRecordError(record, Reason.TOO_LONG, f"{frames / rate:.2f} s > {max_seconds} s: {path}")
            audio = f.read(dtype="float32", always_2d=True)  # (samples, channels)
    except RuntimeError as e:  # sf.LibsndfileError is a RuntimeError
        raise BadRecordError(record, Reason.CORRUPT_AUDIO, f"{path}: {e}") from e
    if len(audio) < frames:
        raise BadRecordError(record, Reason.TRUNCATED_AUDIO, f"{len(audio)} of {frames} frames: {path}")
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


def wav_bytes_missing(path: str) -> int:
    """How many bytes a RIFF/WAVE file's `data` chunk declares beyond the file's end (0 if whole, or not a WAV).

    A streamed WAV whose writer never knew the length declares 0 or 0xFFFFFFFF: read as whole.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return 0
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                available = size - offset - 8
                return 0 if length in (0, 0xFFFFFFFF) else max(0, length - available)
            offset += 8 + length + (length & 1)  # chunks are word-aligned
    return 0
