"""Speech units -> waveform: the Token2Wav interface and its implementations."""
