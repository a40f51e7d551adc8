"""Audio and text on disk -> batches: manifests, validation, Whisper features, tokenization, Grain pipeline."""
