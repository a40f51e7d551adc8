"""Training configuration: frozen dataclasses around a `ModelConfig`, presets and `key=value` overrides.

    cfg = get_train_config("tiny", ["stage.name=text", "optimizer.lr=1e-3", "model.llm.num_layers=2"])

The same override syntax and checks as the model config (unknown keys and ill-typed values raise
`ConfigError`); `train_keys()` lists every key for `--help`. Distinct things have distinct names:
`train_steps` (optimizer updates), `mask.denoise_steps` / `model.sampler.denoise_steps` (steps per
speech block), `distill.round_updates` (updates per distillation round).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field

from mdm_jax.config.distill import DistillConfig
from mdm_jax.config.mask import MaskConfig
from mdm_jax.config.model import PRESETS, ModelConfig
from mdm_jax.config.overrides import ConfigError, apply_overrides, check, config_keys, from_dict

STAGES = ("text", "speech", "distill")  # stage I speech->text, stage II speech->speech, self-distillation
OBJECTIVES = ("mdm", "ar", "mtp")  # stage II speech-decoder objective


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh ('data', 'fsdp', 'model'); data -1 = all remaining devices. 'fsdp' splits params and
    optimizer state too (gathered per layer where used); batches split over 'data' x 'fsdp'."""

    data: int = -1
    model: int = 1
    fsdp: int = 1


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay, global-norm clipping, gradient accumulation."""

    lr: float = 2e-4
    warmup: float = 0.03  # fraction of `train_steps`
    final_lr: float = 0.0  # fraction of `lr` at the last step
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01  # matrices only: never norms, biases or embeddings
    clip_norm: float = 1.0  # 0 disables clipping
    accum_steps: int = 1  # micro-batches per update; the batch size must divide


@dataclass(frozen=True)
class StageConfig:
    """What trains and on which loss. text: adaptor + LoRA on the LLM (encoder frozen); speech: the
    speech decoder on `objective` (LLM states without grad); distill: the speech decoder, rounds of
    self-distillation (`TrainConfig.distill`)."""

    name: str = "speech"
    objective: str = "mdm"
    streaming_prob: float = 0.5  # samples trained with the streaming text mask
    mtp_decay: float = 0.8
    train_llm: bool = False  # text: train the LLM's own weights instead of LoRA (an LLM trained from scratch)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "wq,wk,wv,wo,w_gate,w_up,w_down"


@dataclass(frozen=True)
class DataSourceConfig:
    """Batches from a Grain pipeline over `manifest`, or synthetic batches when it is empty."""

    manifest: str = ""
    llm_states: str = ""  # speech/distill: a `mdm_jax.train.llm_states` cache, not the frozen LLM each step
    tokenizer: str = ""  # tokenizer.json; empty = `tokenizer.json` beside the manifest
    root: str = ""  # the manifest's paths may lead here too, besides its own folder (symlinks resolved)
    allow_outside_root: bool = False  # let the manifest's paths lead anywhere (they are skipped otherwise)
    template: str = "tiny"  # data_pipelines.tokenizer.TEMPLATES
    batch_size: int = 8  # global batch, over all processes
    max_seconds: float = 4.0
    max_text: int = 96
    max_units: int = 128
    pad_multiple: int = 32  # bucketed lengths round up to this: fewer shapes, fewer compilations
    cache_encoder: bool = False  # stage I: the frozen encoder once per record, its frames kept in host memory
    bucket_window: int = 0  # llm_states: batches of similar answer length, sorted in windows of this many (0: off)
    batching: str = "bucket"  # "pack": several examples per row (stage I cache_encoder, stage II llm_states)
    pack_seconds: float = 0.0  # packed stage I rows: audio per row (0: max_seconds)
    pack_text: int = 0  # packed rows: text tokens (stage I) or answer states (stage II) per row (0: the longest)
    pack_units: int = 0  # packed rows: speech units per row, rounded up to whole blocks (0: the longest)
    seed: int = 0


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100  # steps between saves (and always at the end and on SIGTERM)
    max_to_keep: int = 3
    async_save: bool = True
    start_over: bool = False  # when every checkpoint in the workdir is damaged: start from step 0, not stop


@dataclass(frozen=True)
class DistributedConfig:
    """Multi-host: `coordinator` host:port starts jax.distributed; `auto` lets JAX detect the cluster."""

    coordinator: str = ""
    num_processes: int = 1
    process_id: int = 0
    auto: bool = False


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataSourceConfig = field(default_factory=DataSourceConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    init_from: str = ""  # params_io folder (e.g. stage I's `--export`) to start from instead of random params
    train_steps: int = 1000  # optimizer updates of the run
    seed: int = 0
    log_every: int = 10
    max_bad_steps: int = 10  # consecutive non-finite losses/gradients before the run stops
    peak_tflops: float = 0.0  # per device, for MFU; 0 = from the device kind when known

    def __post_init__(self):
        check(self.stage.name in STAGES, f"stage.name={self.stage.name!r}; expected one of {STAGES}")
        check(self.stage.objective in OBJECTIVES,
              f"stage.objective={self.stage.objective!r}; expected one of {OBJECTIVES}")
        check(self.train_steps > 0 and self.checkpoint.every > 0 and self.log_every > 0,
              "train_steps, checkpoint.every and log_every must be positive")
        accum = self.optimizer.accum_steps
        check(accum > 0 and self.data.batch_size % accum == 0,
              f"data.batch_size={self.data.batch_size} must be a multiple of optimizer.accum_steps={accum}")
        check(self.mesh.model > 0 and self.mesh.fsdp > 0 and self.mesh.data != 0,
              "mesh.model and mesh.fsdp must be > 0, mesh.data > 0 or -1")
        check(not self.data.llm_states or self.stage.name != "text",
              "data.llm_states holds stage II inputs: it cannot train stage.name=text")
        check(self.data.bucket_window >= 0, f"data.bucket_window={self.data.bucket_window} must be >= 0")
        check(not self.data.cache_encoder or self.stage.name == "text",
              "data.cache_encoder caches stage I's encoder frames: stage II reads data.llm_states instead")
        check(self.data.batching in ("bucket", "pack"),
              f"data.batching={self.data.batching!r}; expected bucket or pack")
        check(self.data.batching != "pack" or self.data.cache_encoder or self.data.llm_states,
              "data.batching=pack needs data.cache_encoder=true (stage I) or data.llm_states (stage II): the Whisper "
              "encoder inside the step runs on bucketed rows")
        check(self.data.batching != "pack" or not self.data.bucket_window,
              "data.batching=pack and data.bucket_window: choose one")
        check(self.stage.objective != "mtp" or self.model.speech_decoder.mtp_modules > 0,
              "stage.objective=mtp needs model.speech_decoder.mtp_modules > 0")
        distilling, strategy = self.stage.name == "distill", self.mask.strategy
        check(not distilling or self.distill.allocation != "schedule" or strategy == "sampler_states",
              f"distill.allocation=schedule trains on the S-step sampler's states: it needs "
              f"mask.strategy=sampler_states, not {strategy!r}")
        check(not distilling or strategy != "sampler_states_confidence",
              "distillation masks from the units alone: mask.strategy=sampler_states_confidence needs the "
              "speech objective's model scores")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return from_dict(cls, json.loads(text))


def get_train_config(name: str, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """`name` is a model preset (`tiny`, `vocalnet-1b`, ...); overrides use dotted keys (`model.llm.num_layers=2`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return apply_overrides(TrainConfig(model=PRESETS[name]), overrides)


def train_keys() -> dict[str, type]:
    return config_keys(TrainConfig())
