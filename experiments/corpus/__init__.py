"""The embedded spoken corpus, built offline: dialogues, speech synthesis, speech units.

The one part of data_pipelines that imports mdm_jax (the Whisper encoder for the units)."""
