"""Any sampler under `jax.shard_map` on the training mesh: requests over 'data' x 'fsdp', attention
heads, MLP and KV cache over 'model', weights gathered over 'fsdp' where used (the params laid out
by the one logical-axis table).

    mesh = make_mesh(MeshConfig(data=4, model=2))
    out = generate(params["speech_decoder"], text_hidden, text_valid, streaming, key, cfg=cfg, num_blocks=8,
                   mesh=mesh)          # the batch must divide 'data' x 'fsdp'

Greedy decoding gives the tokens of the unsharded sampler (up to near-ties in the logits); with
temperature, each batch shard draws its own noise.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mdm_jax.config.model import ModelConfig
from mdm_jax.decode import speech
from mdm_jax.model.sharding import BATCH, for_mesh, logical_specs
from mdm_jax.model.speech_decoder import SpeechDecoder


def speech_decoder_specs(cfg: ModelConfig, mesh: Mesh):
    """PartitionSpecs of the speech decoder's params on `mesh`, from shapes alone."""
    sd = cfg.speech_decoder
    init = lambda key: SpeechDecoder(sd).init(key, jnp.zeros((1, 2, sd.d_model)), jnp.zeros((1, 3), jnp.int32))
    return for_mesh(logical_specs(jax.eval_shape(init, jax.random.key(0))["params"]), mesh)


@functools.partial(jax.jit, static_argnames=("cfg", "num_blocks", "mesh"))
def generate(params, text_hidden, text_valid, streaming, key, *, cfg: ModelConfig, num_blocks: int,
             mesh: Mesh) -> speech.Speech:
    """`speech.generate` with the batch (axis 0 of every input) split over 'data' x 'fsdp'."""
    def run(params, text_hidden, text_valid, streaming):
        shard_key = jax.random.fold_in(key, lax.axis_index(BATCH))
        out = speech.generate(params, text_hidden, text_valid, streaming, shard_key, cfg=cfg, num_blocks=num_blocks)
        return out._replace(forwards=lax.pmax(out.forwards, BATCH))  # shards stop at their own last EOS

    batch = P(BATCH)
    return jax.shard_map(run, mesh=mesh, in_specs=(speech_decoder_specs(cfg, mesh), batch, batch, batch),
                         out_specs=speech.Speech(batch, batch, P()), check_vma=True)(
        params, text_hidden, text_valid, streaming)
