"""The small VocalNet the training tests share: every width `width`, FFN 2·width, one layer each."""


def small_overrides(*, width: int = 32, heads: int = 2, llm_kv_heads: int = 2, vocab: int = 128, units: int = 32,
                    batch: int = 4, steps: int = 10) -> list[str]:
    """`key=value` overrides of the `tiny` train preset (a list, so tests can append their own)."""
    return [
        f"model.encoder.d_model={width}", "model.encoder.num_layers=1", f"model.encoder.num_heads={heads}",
        f"model.encoder.ffn_dim={2 * width}", f"model.adaptor.hidden_dim={width}", f"model.llm.d_model={width}",
        "model.llm.num_layers=1", f"model.llm.num_heads={heads}", f"model.llm.num_kv_heads={llm_kv_heads}",
        f"model.llm.ffn_dim={2 * width}", f"model.llm.vocab_size={vocab}", f"model.speech_decoder.d_model={width}",
        f"model.speech_decoder.num_heads={heads}", f"model.speech_decoder.num_kv_heads={heads}",
        f"model.speech_decoder.ffn_dim={2 * width}", "model.speech_decoder.num_layers=1",
        "model.speech_decoder.mtp_modules=0", f"model.speech_decoder.num_units={units}",
        "model.speech_decoder.block_size=5", "model.speech_decoder.text_per_block=2",
        f"data.batch_size={batch}", "data.max_seconds=0.6", "data.max_text=24", "data.max_units=20",
        f"train_steps={steps}",
    ]
