"""`trainer.compile=true`: training runs the torch.compile'd forward, checkpoints (and EMA weights,
and so exported bundles) keep the plain module's keys, `_orig_mod.` keys from elsewhere load,
and a compiler that fails is one line.

The run here compiles with the `eager` backend: Dynamo traces the forward into a graph and
podium trains through the compiled module exactly as with the default (inductor) backend, whose
C++ code generation takes minutes of CPU for the tiny UNet (3.5 CPU-minutes measured here;
bench/compile.py times it) and would not fit the test suite."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_DEMO, TINY_TRAIN

from podium import cli, rundir
from podium.io import PodiumError
from podium.models import load_run_model, strip_compile_prefix
from podium.train import ddp_forward


@pytest.fixture
def compiled_with(monkeypatch):
    """compiled_with(backend) -> the list of modules podium handed to torch.compile."""
    real = torch.compile
    torch.set_num_threads(1)  # in-process training on a shared CPU

    def use(backend):
        compiled = []

        def compile_(module, **kwargs):
            compiled.append(module)
            return real(module, backend=backend)

        monkeypatch.setattr(torch, "compile", compile_)
        return compiled

    yield use
    torch._dynamo.reset()


@pytest.mark.slow
def test_a_compiled_run_trains_and_saves_plain_keys_that_load(demo_paths, tmp_path, compiled_with):
    compiled = compiled_with("eager")
    run = tmp_path / "run"
    overrides = [*TINY_DEMO, *TINY_TRAIN, *demo_paths, "trainer.compile=true"]
    assert cli.main(["train", *overrides, f"hydra.run.dir={run}"]) == 0
    assert len(compiled) == 1  # the training forward, and nothing else
    for which in ("best", "last"):
        checkpoint = rundir.load_checkpoint(rundir.checkpoint_path(run, which))
        keys = [*checkpoint["model"], *checkpoint["ema"]]
        assert keys and not [k for k in keys if "_orig_mod" in k]
        assert checkpoint["config"]["trainer"]["compile"] is True
    plain, _ = load_run_model(run, weights="model")
    ema, _ = load_run_model(run, weights="ema")

    # A checkpoint written by a compiled module (as Lightning writes them) loads the same.
    path = rundir.checkpoint_path(run, "best")
    checkpoint = rundir.load_checkpoint(path)
    checkpoint["model"] = {f"_orig_mod.{k}": v for k, v in checkpoint["model"].items()}
    checkpoint["ema"] = {
        k.replace("module.", "module._orig_mod.", 1): v for k, v in checkpoint["ema"].items()
    }
    rundir.save_checkpoint(checkpoint, path)
    for weights, reference in (("model", plain), ("ema", ema)):
        loaded, _ = load_run_model(run, weights=weights)
        for key, value in reference.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (weights, key)


def test_the_prefix_goes_only_where_compile_put_it():
    value = torch.zeros(1)
    state = {
        "_orig_mod.net.conv.weight": value,
        "module._orig_mod.net.conv.weight": value,
        "n_averaged": value,
        "net.head._orig_mod_like.weight": value,  # a name that merely looks alike stays
    }
    assert list(strip_compile_prefix(state)) == [
        "net.conv.weight",
        "module.net.conv.weight",
        "n_averaged",
        "net.head._orig_mod_like.weight",
    ]


def test_a_compiler_that_fails_is_one_line(compiled_with):
    """What training's forward pass (train.ddp_forward) makes of a compiler that fails, e.g. a
    machine without a C++ compiler for inductor."""

    def broken(graph, example_inputs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    compiled_with(broken)
    model = torch.compile(torch.nn.Linear(3, 2))
    with pytest.raises(PodiumError) as error:
        ddp_forward(model, torch.randn(4, 3))
    message = str(error.value)
    assert message.startswith("trainer.compile=true: torch.compile cannot compile the model")
    assert "(RuntimeError: no C++ compiler found)" in message and "\n" not in message
    assert message.endswith("set trainer.compile=false")


def test_compile_is_off_by_default():
    from podium.config import compose_config

    assert compose_config("train").trainer.compile is False
