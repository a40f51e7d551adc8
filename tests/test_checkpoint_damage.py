"""A damaged checkpoint (files cut short, overwritten, emptied; the state's arrays alone cut short; the
data-iterator state missing; arrays of another config's shapes) is named in one line, moved to
`checkpoints/damaged/`, and the run resumes from the newest intact step, bit-identical at the end to an
uninterrupted run; with none intact it stops in one line (exit 2) or, asked to, starts over. A save that
fails (here: the asynchronous commit of step 4 refused, as a full disk refuses it) ends the run in one
line (exit 1), leaves step 2 the latest and the rerun bit-identical. Two processes (gloo on 127.0.0.1)
agree on the step they resume. The runs go through the command line
in this process (`mdm_jax.train.__main__.main`), so they share compiled programs."""

import contextlib
import io
import os
import shutil
import textwrap

import jax
import numpy as np
import pytest
from processes import run_together
from small_train import small_overrides
from test_multihost import free_port

from mdm_jax.config.train import CheckpointConfig
from mdm_jax.train.__main__ import main
from mdm_jax.train.checkpointing import Checkpointer

SMALL = small_overrides() + ["checkpoint.every=2", "checkpoint.max_to_keep=4", "train_steps=8"]


def run(workdir, *extra) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m mdm_jax.train --workdir ... SMALL extra`."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["--workdir", str(workdir), *SMALL, *extra])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def saved(workdir, step):
    ckpt = Checkpointer(workdir / "checkpoints", CheckpointConfig())
    state = ckpt.saved_state(step)
    ckpt.close()
    return state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run to step 8; the same as if stopped after step 6 (checkpoints 2, 4, 6) to damage
    copies of; and 2 steps of another config."""
    root = tmp_path_factory.mktemp("runs")
    assert run(root / "ref")[0] == 0
    shutil.copytree(root / "ref", root / "six")
    shutil.rmtree(root / "six" / "checkpoints" / "8")
    assert run(root / "other", "train_steps=2", "model.speech_decoder.d_model=48")[0] == 0
    return root


def files(folder):
    return [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]


def halve(folder):
    for path in files(folder):
        os.truncate(path, os.path.getsize(path) // 2)


def overwrite(folder):
    for path in files(folder):
        with open(path, "wb") as f:
            f.write(os.urandom(os.path.getsize(path)))


def empty(folder):
    for name in os.listdir(folder):
        shutil.rmtree(os.path.join(folder, name)) if os.path.isdir(os.path.join(folder, name)) else os.remove(
            os.path.join(folder, name))


def arrays_cut(folder):  # the state's array files alone, JSON items intact
    halve(os.path.join(folder, "state", "d"))


def no_data_state(folder):
    shutil.rmtree(os.path.join(folder, "data"))


DAMAGE = {"halved": (halve, "unreadable"), "overwritten": (overwrite, "unreadable"), "emptied": (empty, "missing"),
          "arrays cut short": (arrays_cut, "(state "), "no data state": (no_data_state, "data missing")}


def assert_resumed_at_4(runs, workdir, code, out, err, reason):
    assert code == 0, err[-2000:]
    line = next(x for x in out.splitlines() if x.startswith("checkpoint step 6 is damaged"))
    assert reason in line and f"moved to {workdir / 'checkpoints' / 'damaged' / '6'}" in line, line
    assert "resumed from step 4" in out and '"start_step": 4' in out and "Traceback" not in err
    assert os.path.isdir(workdir / "checkpoints" / "damaged" / "6")  # set aside, never deleted
    jax.tree.map(np.testing.assert_array_equal, saved(workdir, 8), saved(runs / "ref", 8))


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_latest_is_set_aside_and_the_run_resumes_exactly(runs, tmp_path, kind):
    damage, reason = DAMAGE[kind]
    workdir = tmp_path / "run"
    shutil.copytree(runs / "six", workdir)
    damage(str(workdir / "checkpoints" / "6"))
    assert_resumed_at_4(runs, workdir, *run(workdir), reason)


def test_a_checkpoint_of_another_configs_shapes_is_damage(runs, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(runs / "six", workdir)
    state = workdir / "checkpoints" / "6" / "state"
    shutil.rmtree(state)
    shutil.copytree(runs / "other" / "checkpoints" / "2" / "state", state)
    assert_resumed_at_4(runs, workdir, *run(workdir), "state does not match the config's shapes")


def test_no_intact_checkpoint_stops_in_one_line_or_starts_over(runs, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(runs / "six", workdir)
    for step in ("2", "4", "6"):
        overwrite(str(workdir / "checkpoints" / step))
    code, out, err = run(workdir)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: no intact checkpoint in {workdir / 'checkpoints'} (damaged: 6, 4, 2, moved to damaged/); "
        "checkpoint.start_over=true starts the run from step 0"], err
    code, out, err = run(workdir, "checkpoint.start_over=true")
    assert code == 0 and '"start_step": 0' in out, err[-2000:]
    jax.tree.map(np.testing.assert_array_equal, saved(workdir, 8), saved(runs / "ref", 8))


def test_a_failed_save_ends_in_one_line_and_loses_nothing(runs, tmp_path, monkeypatch):
    from orbax.checkpoint._src.path import async_path

    rename = async_path.rename

    async def refuse_step_4(src, dst):  # the commit of step 4, in the background: as a full disk refuses it
        if os.path.basename(str(dst)) == "4":
            raise OSError(28, "No space left on device")
        return await rename(src, dst)

    workdir = tmp_path / "run"
    monkeypatch.setattr(async_path, "rename", refuse_step_4)
    code, out, err = run(workdir)
    monkeypatch.undo()
    assert code == 1 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1:] == [  # after the progress bar
        f"error: saving checkpoint step 4 in {workdir / 'checkpoints'} failed: [Errno 28] No space left on device; "
        "the steps saved before it are intact"], err
    assert Checkpointer(workdir / "checkpoints", CheckpointConfig()).latest_step() == 2
    code, out, err = run(workdir)
    assert code == 0 and "resumed from step 2" in out, err[-2000:]
    jax.tree.map(np.testing.assert_array_equal, saved(workdir, 8), saved(runs / "ref", 8))


TWO_PROCESSES = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, workdir, steps, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split()
    from mdm_jax.config.train import get_train_config
    from mdm_jax.train.loop import initialize_distributed, train
    cfg = get_train_config("tiny", overrides + ["mesh.data=2", f"distributed.coordinator=127.0.0.1:{port}",
                                                "distributed.num_processes=2", f"distributed.process_id={pid}",
                                                f"train_steps={steps}"])
    initialize_distributed(cfg.distributed)
    summary = train(cfg, workdir)
    print("summary", summary["start_step"], summary["step"], summary["loss"], flush=True)
""")


def test_two_processes_agree_on_the_step_they_resume(tmp_path):
    """Both check step 6, find it damaged, process 0 sets it aside, both resume from step 4."""
    overrides = " ".join(SMALL[:-1])  # without train_steps

    def both(steps):
        return run_together([[TWO_PROCESSES, str(i), port, str(tmp_path), str(steps), overrides] for i in range(2)],
                            600)

    port = str(free_port())
    both(6)
    with open(tmp_path / "checkpoints" / "6" / "config" / "metadata", "w") as f:
        f.write("{cut short")
    port = str(free_port())
    first, second = both(8)
    assert "checkpoint step 6 is damaged (config, data or meta unreadable" in first  # process 0 says it
    for out in (first, second):
        assert "resumed from step 4" in out
    summaries = [next(x for x in out.splitlines() if x.startswith("summary")) for out in (first, second)]
    assert summaries[0] == summaries[1] and summaries[0].startswith("summary 4 8 "), summaries
    assert os.listdir(tmp_path / "checkpoints" / "damaged") == ["6"]
