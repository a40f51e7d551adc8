"""Every train and decode step of `tiny` compiles for a TPU slice (v5e 2x2) from this CPU host, with libtpu's own
compiler: stage I (LoRA), stage II (AR on the text-prefix Talker, MTP; MDM through `plan_memory`'s test) and
distillation (the MDM layout with a teacher), each on a mesh
that splits data, FSDP and model, with `model.attention=auto` (splash on a TPU) and the Pallas kernel in the
program; and the decode steps (LLM prefill and step; for block diffusion, AR and MTP the block interface streaming
drives and the whole-answer `generate`)."""

import pytest

from mdm_jax.config.train import MeshConfig, get_train_config
from mdm_jax.model.sharding import make_mesh
from mdm_jax.train import aot

STEPS = [  # (preset, stage, objective, mesh data x fsdp x model); MDM on 1 x 2 x 2: tests/test_plan_memory.py
    ("tiny", "text", "mdm", (2, 2, 1)),
    ("tiny-vocalnet", "speech", "ar", (2, 1, 2)),
    ("tiny", "speech", "mtp", (1, 4, 1)),
    ("tiny", "distill", "mdm", (1, 2, 2)),
]


@pytest.fixture(scope="module")
def slice_devices():
    return aot.target_devices("tpu:v5e:2x2")


@pytest.mark.parametrize("preset, stage, objective, mesh", STEPS)
def test_train_step_compiles_for_a_tpu_slice(slice_devices, preset, stage, objective, mesh):
    data, fsdp, model = mesh
    cfg = get_train_config(preset, [f"stage.name={stage}", f"stage.objective={objective}", f"mesh.data={data}",
                                    f"mesh.fsdp={fsdp}", f"mesh.model={model}", "data.batch_size=4"])
    compiled = aot.compile_train_step(cfg, slice_devices)
    assert "tpu_custom_call" in compiled.as_text(), "no splash kernel in the TPU program"
    memory = compiled.memory_analysis()
    assert 0 < memory.argument_size_in_bytes < 2**30


def test_decode_steps_compile_for_a_tpu_chip(slice_devices):
    compiled = aot.compile_decode_steps(get_train_config("tiny"), slice_devices[0])
    assert set(compiled) == {"llm_prefill", "llm_step"} | {
        f"{method}_{program}" for method in ("mdm", "ar", "mtp")
        for program in ("begin", "add_text", "first_block", "next_block", "generate")}


def test_meshes_that_split_a_physical_axis():
    """fsdp 16 x model 4 on a v6e 8x8 torus splits one of its axes of 8."""
    mesh = make_mesh(MeshConfig(data=1, fsdp=16, model=4), aot.target_devices("tpu:v6e:8x8"))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 16, "model": 4} and mesh.devices.size == 64


def test_unknown_targets_are_named():
    with pytest.raises(Exception, match="tpu:v9x"):
        aot.target_devices("tpu:v9x:2x2")
    with pytest.raises(Exception, match="gpu:8"):
        aot.target_devices("gpu:8")
