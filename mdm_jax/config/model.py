"""Model configuration: frozen dataclasses, named presets and `key=value` overrides.

    cfg = get_config("tiny", ["llm.num_layers=2", "dtype=bfloat16"])
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field

from mdm_jax.config.overrides import ConfigError, apply_overrides, check, differing_keys, from_dict
from mdm_jax.config.sampler import SamplerConfig


@dataclass(frozen=True)
class EncoderConfig:
    """Whisper encoder (frozen in every stage)."""

    num_mel_bins: int = 80
    d_model: int = 384
    num_layers: int = 4
    num_heads: int = 6
    ffn_dim: int = 1536
    max_source_positions: int = 1500  # 30 s at 50 Hz after the stride-2 conv
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class WhisperDecoderConfig:
    """Whisper's text decoder (the ASR judge); defaults: Whisper tiny.en."""

    vocab_size: int = 51864
    d_model: int = 384
    num_layers: int = 4
    num_heads: int = 6
    ffn_dim: int = 1536
    max_target_positions: int = 448
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class AdaptorConfig:
    """Concatenate `downsample` encoder frames (50 Hz -> 10 Hz), then Linear-ReLU-Linear."""

    downsample: int = 5
    hidden_dim: int = 2048


@dataclass(frozen=True)
class LLMConfig:
    """Decoder-only LLM of the LLaMA (3.x), Qwen2 or Qwen3 family.

    `head_dim_override` > 0 sets a head width other than d_model // num_heads (Qwen3-0.6B); 0 wherever they agree.
    """

    family: str = "llama"  # "llama" | "qwen2" | "qwen3"
    vocab_size: int = 2048
    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim_override: int = 0
    ffn_dim: int = 768
    rope_theta: float = 10_000.0
    rope_scaling: str = "none"  # "none" | "llama3"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    rms_norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.d_model // self.num_heads

    @property
    def qk_norm(self) -> bool:
        """Per-head RMSNorm on q and k before RoPE: every Qwen3 checkpoint has it, no other family does."""
        return self.family == "qwen3"


TALKERS = ("vocalnet", "anchor")


@dataclass(frozen=True)
class SpeechDecoderConfig:
    """The speech decoder ("Talker"), one of two designs (`talker`):

    - `vocalnet`: VocalNet's decoder over `[BOS][pre-NN(text states)][SOS][speech]`, the text a
      prefix that speech block c reads up to position (c + 1)·text_per_block (5 text : 15 speech)
      under the streaming mask; its width is the LLM's.
    - `anchor`: VocalNet-MDM's Talker over `[BOS][SOS][speech]`: the Thinker's states enter as
      anchors added at the first Q = text_per_block positions of each block (block c's anchors
      are text states cQ .. cQ + Q - 1, a learned end-of-text vector past the text), attention
      block-causal, so block c sees text < (c + 1)·Q and nothing of its future; any width.

    Speech ids: units 0..num_units-1, then BOS, SOS, EOS, PAD (VocalNet) and MASK (ours).
    The head predicts units + the four specials; MASK is an input-only id.
    """

    talker: str = "anchor"  # the paper's; "vocalnet" is VocalNet's (presets vocalnet-*, tiny-vocalnet)
    num_units: int = 512
    d_model: int = 256  # vocalnet: = LLM width (the text states are fed as they are)
    num_heads: int = 4
    num_kv_heads: int = 4
    ffn_dim: int = 768
    prenn_layers: int = 0  # vocalnet: causal layers over the text states (VocalNet: 2); anchor: none
    num_layers: int = 4  # the paper's Talker: 4 layers
    mtp_modules: int = 3
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6
    block_size: int = 16  # speech tokens per block (the paper's B; VocalNet's streaming chunk: 15 = 0.6 s)
    text_per_block: int = 4  # text states per speech block: the paper's Q = 4 anchors : 16, VocalNet's 5 : 15
    # 0: SOS right after the real text (VocalNet). > 0: SOS at this RoPE position whatever the text
    # length, which streaming needs: the text length is unknown when the first block is decoded.
    speech_position_offset: int = 0
    # the VocalNet release this Talker was converted from (`convert vocalnet`): trained AR + MTP, never to denoise
    converted_from: str = ""

    def __post_init__(self):
        check(self.talker in TALKERS, f"speech_decoder.talker={self.talker!r}; expected one of {TALKERS}")
        check(self.text_in_prefix or 0 < self.text_per_block <= self.block_size,
              f"speech_decoder.text_per_block={self.text_per_block} anchors must fit in a block of "
              f"{self.block_size}")
        check(self.text_in_prefix or self.prenn_layers == 0,
              "speech_decoder.talker=anchor has no pre-NN over the text: set speech_decoder.prenn_layers=0")

    @property
    def text_in_prefix(self) -> bool:
        """Whether the text states are a prefix of the decoder's sequence (vocalnet), not anchors."""
        return self.talker == "vocalnet"

    def prefix_text(self, text_valid):
        """The text slots of the decoder's sequence, (b, T) -> all of them (vocalnet) or none (anchor)."""
        return text_valid if self.text_in_prefix else text_valid[:, :0]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def bos_id(self) -> int:
        return self.num_units

    @property
    def sos_id(self) -> int:
        return self.num_units + 1

    @property
    def eos_id(self) -> int:
        return self.num_units + 2

    @property
    def pad_id(self) -> int:
        return self.num_units + 3

    @property
    def mask_id(self) -> int:
        return self.num_units + 4

    @property
    def output_vocab(self) -> int:
        return self.num_units + 4

    @property
    def input_vocab(self) -> int:
        return self.num_units + 5


REMAT_POLICIES = ("full", "dots", "dots_and_attention")  # model/transformer.py maps each to a jax policy
# model/attention.py: grouped einsums, cuDNN's fused kernel (GPU, bf16/fp16), the TPU splash kernel (skips masked
# tiles), or auto: splash on a TPU, einsum elsewhere
ATTENTION = ("einsum", "cudnn", "splash", "auto")


@dataclass(frozen=True)
class Execution:
    """How the layers run, never what they compute: layer stacks scanned over one compiled body
    (training: stacked params) or unrolled over per-layer params (decoding, where a scan would slice
    every layer's weights on every step; and the compile-time baseline), rematerialised under a
    policy of `REMAT_POLICIES` or "none", attention by one of `ATTENTION`."""

    remat: str = "none"
    unroll: bool = False
    attention: str = "einsum"

    def __post_init__(self):
        if self.remat != "none" and self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat_policy={self.remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        if self.attention not in ATTENTION:
            raise ConfigError(f"attention={self.attention!r} is not one of {', '.join(ATTENTION)}")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adaptor: AdaptorConfig = field(default_factory=AdaptorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    speech_decoder: SpeechDecoderConfig = field(default_factory=SpeechDecoderConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # how speech tokens are decoded by default
    dtype: str = "float32"  # compute dtype; params stay float32
    remat: bool = False  # jax.checkpoint around every transformer layer, under `remat_policy`
    remat_policy: str = "full"  # what the backward pass keeps: full (nothing), dots, dots_and_attention
    unroll_layers: bool = False  # per-layer params, layers unrolled (decoding sets it; longer compiles)
    attention: str = "auto"  # einsum, cudnn (fused flash attention on NVIDIA GPUs in bf16), splash (TPU), auto

    @property
    def execution(self) -> Execution:
        return Execution(self.remat_policy if self.remat else "none", self.unroll_layers, self.attention)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return from_dict(cls, json.loads(text))


# Keys that change how params are used, never what they are: params saved under one value load under
# another (`init_from`, the CLI's overrides of a checkpoint), e.g. a stage I checkpoint trains a decoder
# of any block size; a converted release's Talker trained here drops its `converted_from`.
USAGE_KEYS = ("name", "dtype", "remat", "unroll_layers", "attention", "sampler.", "speech_decoder.block_size",
              "speech_decoder.text_per_block", "speech_decoder.speech_position_offset",
              "speech_decoder.converted_from")


def param_mismatch(saved: ModelConfig, cfg: ModelConfig) -> list[str]:
    """Keys other than `USAGE_KEYS` on which two model configs differ: their params are not interchangeable."""
    return [k for k in differing_keys(saved, cfg) if not k.startswith(USAGE_KEYS)]


# ---------------------------------------------------------------------------------------------
# Presets

WHISPER_TINY_EN = EncoderConfig()
WHISPER_LARGE_V3 = EncoderConfig(
    num_mel_bins=128, d_model=1280, num_layers=32, num_heads=20, ffn_dim=5120
)

LLAMA_3_2_1B = LLMConfig(
    vocab_size=128_256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
    ffn_dim=8192, rope_theta=500_000.0, rope_scaling="llama3", rope_factor=32.0,
    tie_embeddings=True,
)
LLAMA_3_1_8B = LLMConfig(
    vocab_size=128_256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
    ffn_dim=14_336, rope_theta=500_000.0, rope_scaling="llama3", rope_factor=8.0,
    tie_embeddings=False,
)
QWEN2_5_7B = LLMConfig(
    family="qwen2", vocab_size=152_064, d_model=3584, num_layers=28, num_heads=28,
    num_kv_heads=4, ffn_dim=18_944, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    qkv_bias=True, tie_embeddings=False,
)
QWEN3_8B = LLMConfig(
    family="qwen3", vocab_size=151_936, d_model=4096, num_layers=36, num_heads=32, num_kv_heads=8,
    ffn_dim=12_288, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_embeddings=False,
)


def _vocalnet_decoder(llm: LLMConfig) -> SpeechDecoderConfig:
    """Published VocalNet talker: width of the LLM, 32 heads (28 for Qwen), FFN 8192, 2 + 4 layers,
    chunks of 15 speech tokens per 5 text states."""
    heads = 32 if llm.d_model % 32 == 0 else llm.num_heads
    return SpeechDecoderConfig(
        talker="vocalnet", num_units=6561, d_model=llm.d_model, num_heads=heads, num_kv_heads=heads,
        ffn_dim=8192, prenn_layers=2, num_layers=4, mtp_modules=5, block_size=15, text_per_block=5,
    )


# VocalNet-MDM's Talker (4 layers from scratch, B = 16, Q = 4) at a width the paper does not give:
# ours, 1024 (16 heads, FFN 4096), with VocalNet's 5 MTP modules for the AR-MTP baseline.
MDM_TALKER = SpeechDecoderConfig(num_units=6561, d_model=1024, num_heads=16, num_kv_heads=16, ffn_dim=4096,
                                 mtp_modules=5)
TINY = ModelConfig(name="tiny", encoder=WHISPER_TINY_EN, adaptor=AdaptorConfig(downsample=5, hidden_dim=512),
                   llm=LLMConfig(), speech_decoder=SpeechDecoderConfig(num_layers=2))


PRESETS: dict[str, ModelConfig] = {
    "tiny": TINY,  # the anchor Talker, 2 layers: what a CPU demo trains
    "tiny-vocalnet": dataclasses.replace(  # the ablation: VocalNet's talker (1 pre-NN + 2 layers, 5 : 15)
        TINY, name="tiny-vocalnet", speech_decoder=SpeechDecoderConfig(
            talker="vocalnet", prenn_layers=1, num_layers=2, block_size=15, text_per_block=5,
            speech_position_offset=256)),
    "vocalnet-1b": ModelConfig(
        name="vocalnet-1b", encoder=WHISPER_LARGE_V3, llm=LLAMA_3_2_1B,
        speech_decoder=_vocalnet_decoder(LLAMA_3_2_1B), dtype="bfloat16",
    ),
    "vocalnet-8b": ModelConfig(
        name="vocalnet-8b", encoder=WHISPER_LARGE_V3, llm=LLAMA_3_1_8B,
        speech_decoder=_vocalnet_decoder(LLAMA_3_1_8B), dtype="bfloat16", remat=True,
    ),
    "vocalnet-qwen2.5-7b": ModelConfig(
        name="vocalnet-qwen2.5-7b", encoder=WHISPER_LARGE_V3, llm=QWEN2_5_7B,
        speech_decoder=_vocalnet_decoder(QWEN2_5_7B), dtype="bfloat16", remat=True,
    ),
    # speech decoder: a stand-in until the Talker variant lands (no pre-NN, 16-token blocks)
    "vocalnet-mdm-qwen3-8b": ModelConfig(
        name="vocalnet-mdm-qwen3-8b", encoder=WHISPER_LARGE_V3, llm=QWEN3_8B,
        speech_decoder=MDM_TALKER, dtype="bfloat16", remat=True,
    ),
}


def get_config(name: str, overrides: typing.Sequence[str] = ()) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return apply_overrides(PRESETS[name], overrides)
