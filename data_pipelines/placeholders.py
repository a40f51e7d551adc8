"""The prompt id that marks where speech embeddings go (LLaVA / VocalNet convention): shared by the
tokenizer that writes prompts and the model that fills them, so the model need not load a tokenizer."""

SPEECH_PLACEHOLDER = -200
