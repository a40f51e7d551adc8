"""Sharding, declared once: logical axis names -> mesh axes, the mesh itself, and the collective helpers.

Every parameter is created with logical axis names (`nn.with_logical_partitioning`); `RULES`
maps them onto the mesh `('data', 'fsdp', 'model')`: Megatron tensor parallelism over 'model'
(heads and FFN hidden split, the text vocabulary vocab-parallel) and FSDP over 'fsdp' (every
weight's 'embed' axis split; `layers.param` gathers a weight where it is used, per layer inside
a scan, and autodiff scatters its gradient back). Batches split over 'data' x 'fsdp'. Layer code
reads local sizes, gathers through `gather_fsdp` and reduces partial sums through `psum_model`,
each the identity when its axis is not bound, so the same layer runs unsharded in tests and
inside `jax.shard_map` in training.
"""

from __future__ import annotations

import flax.linen as nn
import jax
from jax import lax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.train import MeshConfig

DATA, FSDP, MODEL = "data", "fsdp", "model"
BATCH = (DATA, FSDP)  # the mesh axes a batch's rows are split over

RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", BATCH),
    ("vocab", MODEL),  # text vocabulary: vocab-parallel embedding and head
    ("heads", MODEL),  # column-parallel q/k/v
    ("kv_heads", MODEL),
    ("mlp", MODEL),  # column-parallel gate/up, row-parallel down
    ("embed", FSDP),  # FSDP: params and optimizer state split, gathered per layer where used
    ("conv_out", None),  # the Whisper convs' output channels (Flax convs gather nothing)
    ("position_features", None),  # Whisper's fixed sinusoid table (its init ignores the shard's shape)
    ("head_dim", None),
    ("speech_vocab", None),  # 6565 ids: small and not divisible by the mesh
    ("adaptor", None),
    ("conv", None),
    ("positions", None),
    ("norm", None),
    ("layers", None),  # the leading axis of a scanned stack's params
)


def axis_size(axis: str) -> int:
    """Size of a mesh axis when bound (inside shard_map), else 1."""
    try:
        return lax.axis_size(axis)
    except NameError:
        return 1


def model_axis_size() -> int:
    return axis_size(MODEL)


def gather_fsdp(x, axis: int):
    """This device's slice of a weight, split on `axis` over 'fsdp' -> the whole weight (identity when unbound)."""
    return lax.all_gather(x, FSDP, axis=axis, tiled=True) if axis_size(FSDP) > 1 else x


def fsdp_axis(logical_axes: tuple) -> int | None:
    """Which axis of a weight with these logical names is split over 'fsdp' (None: replicated over it)."""
    split = [i for i, name in enumerate(logical_axes) if dict(RULES).get(name) == FSDP]
    return split[0] if split else None


def model_axis_index():
    """This device's index along 'model' when bound, else 0."""
    try:
        return lax.axis_index(MODEL)
    except NameError:
        return 0


def psum_model(x):
    """Sum the partial results of a row-parallel matmul over 'model' (identity when unbound)."""
    return lax.psum(x, MODEL) if model_axis_size() > 1 else x


def varying_axes(x) -> frozenset:
    """The manual mesh axes `x` varies over inside shard_map (empty outside); `aval.vma` before jax 0.10."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def vary_like(x, *others, sharded: bool = False):
    """`x` (a pytree) cast to vary over every mesh axis that one of `others` varies over, and over
    'model' when `sharded` and the axis splits something: a scan's carry must keep its type under
    `shard_map(check_vma=True)`, and mixing in per-shard inputs or 'model'-split weights makes it vary."""
    want = set().union(*(varying_axes(o) for o in jax.tree.leaves(others)))
    want |= {MODEL} if sharded and model_axis_size() > 1 else set()

    def cast(leaf):
        missing = want - varying_axes(leaf)
        return lax.pcast(leaf, tuple(sorted(missing)), to="varying") if missing else leaf
    return jax.tree.map(cast, x)


def local(n: int, what: str) -> int:
    """Per-device share of a dimension split over 'model', with a clear error if it does not divide."""
    tp = model_axis_size()
    if n % tp:
        raise ValueError(f"{what}={n} is not divisible by the 'model' mesh axis size {tp}")
    return n // tp


def logical_specs(boxed_params) -> dict:
    """PartitionSpecs over mesh axes for a params tree created with logical names."""
    return nn.logical_to_mesh(nn.get_partition_spec(boxed_params), RULES)


def for_mesh(specs, mesh):
    """Drop size-1 'model' and 'fsdp' axes from PartitionSpecs: they shard nothing, and naming them
    would type every activation as varying over them under `shard_map(check_vma=True)`."""
    unused = {a for a in (MODEL, FSDP) if mesh.shape[a] == 1}

    def keep(entry):
        if isinstance(entry, tuple):
            kept = tuple(a for a in entry if a not in unused)
            return kept if len(kept) > 1 else (kept[0] if kept else None)
        return None if entry in unused else entry
    return jax.tree.map(lambda s: PartitionSpec(*(keep(a) for a in s)), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def data_parallel(mesh: Mesh) -> int:
    """How many ways a batch's rows are split on `mesh` ('data' x 'fsdp')."""
    return mesh.shape[DATA] * mesh.shape[FSDP]


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """('data', 'fsdp', 'model') mesh over `devices` (default all); data -1 = the remaining devices.
    Training and sharded inference build it the same way."""
    devices = jax.devices() if devices is None else devices
    data = len(devices) // (cfg.fsdp * cfg.model) if cfg.data == -1 else cfg.data
    if data * cfg.fsdp * cfg.model != len(devices) or data < 1:
        raise ConfigError(f"mesh.data={cfg.data} x mesh.fsdp={cfg.fsdp} x mesh.model={cfg.model} does not match "
                          f"{len(devices)} devices")
    shape, names, types = (data, cfg.fsdp, cfg.model), (DATA, FSDP, MODEL), (AxisType.Auto,) * 3
    try:
        return jax.make_mesh(shape, names, axis_types=types, devices=devices)
    except NotImplementedError:  # a physical axis must be split (e.g. fsdp 16 x model 4 on a v6e 8x8 torus)
        return Mesh(mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True), names,
                    axis_types=types)


def shardings(mesh: Mesh, specs):
    """PartitionSpecs -> NamedShardings on `mesh`, leaf by leaf."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A batch: rows (axis 0) over 'data' x 'fsdp'."""
    return NamedSharding(mesh, PartitionSpec(BATCH))
