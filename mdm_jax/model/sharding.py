"""Sharding, declared once: logical axis names -> mesh axes, the mesh itself, and the one collective helper.

Every parameter is created with logical axis names (`nn.with_logical_partitioning`); `RULES`
maps them onto the mesh `('data', 'model')` (Megatron layout: heads and FFN hidden split over
'model', the text vocabulary vocab-parallel). Layer code reads local sizes and reduces partial
sums through `psum_model`, which is the identity when no 'model' axis is bound, so the same
layer runs unsharded in tests and inside `jax.shard_map` in training.
"""

from __future__ import annotations

import flax.linen as nn
import jax
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.train import MeshConfig

DATA, MODEL = "data", "model"

RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", DATA),
    ("vocab", MODEL),  # text vocabulary: vocab-parallel embedding and head
    ("heads", MODEL),  # column-parallel q/k/v
    ("kv_heads", MODEL),
    ("mlp", MODEL),  # column-parallel gate/up, row-parallel down
    ("embed", None),
    ("head_dim", None),
    ("speech_vocab", None),  # 6565 ids: small and not divisible by the mesh
    ("adaptor", None),
    ("conv", None),
    ("positions", None),
    ("norm", None),
    ("layers", None),  # the leading axis of a scanned stack's params
)


def model_axis_size() -> int:
    """Size of the 'model' mesh axis when bound (inside shard_map), else 1."""
    try:
        return lax.axis_size(MODEL)
    except NameError:
        return 1


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
    """Drop a size-1 'model' axis from PartitionSpecs: it shards nothing, and naming it would type
    every activation as varying over 'model' under `shard_map(check_vma=True)`."""
    if mesh.shape[MODEL] != 1:
        return specs
    return jax.tree.map(lambda s: PartitionSpec(*(None if a == MODEL else a for a in s)), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """('data', 'model') mesh over `devices` (default all); -1 = the remaining devices. Training and
    sharded inference build it the same way."""
    devices = jax.devices() if devices is None else devices
    data = len(devices) // cfg.model if cfg.data == -1 else cfg.data
    if data * cfg.model != len(devices):
        raise ConfigError(f"mesh.data={cfg.data} x mesh.model={cfg.model} does not match {len(devices)} devices")
    return jax.make_mesh((data, cfg.model), (DATA, MODEL), axis_types=(AxisType.Auto,) * 2, devices=devices)


def shardings(mesh: Mesh, specs):
    """PartitionSpecs -> NamedShardings on `mesh`, leaf by leaf."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A batch: rows (axis 0) over 'data'."""
    return NamedSharding(mesh, PartitionSpec(DATA))
