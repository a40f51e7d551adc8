"""Evaluation: the Whisper ASR judge and the metrics of the demo and the sweeps."""
