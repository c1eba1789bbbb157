"""Models: any input size through padding, and every way encoder weights arrive."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import SHARED_DATA, podium_env
from omegaconf import OmegaConf
from safetensors.torch import save_file

from podium.config import compose_config
from podium.io import PodiumError
from podium.models import build_model, pad_to_multiple, unpad

SHARED_WEIGHTS = SHARED_DATA.parent / "weights"


def model_cfg(**overrides):
    cfg = compose_config("train", ["model=unet_mobilenet"]).model
    return OmegaConf.merge(cfg, {"encoder_weights": None, **overrides})


@pytest.mark.parametrize("size", [(101, 101), (120, 97), (64, 64), (5, 3)])
@pytest.mark.parametrize("mode", ["reflect", "constant", "replicate"])
def test_pad_then_unpad_is_identity(size, mode):
    x = torch.randn(2, 3, *size)
    padded, pads = pad_to_multiple(x, 32, mode)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert torch.equal(unpad(padded, pads), x)


def test_padding_is_centred_and_constant_value_applies():
    x = torch.zeros(1, 1, 30, 28)
    padded, pads = pad_to_multiple(x, 32, "constant", value=7.0)
    assert pads == (2, 2, 1, 1)
    assert padded[0, 0, 0, 0] == 7.0 and padded[0, 0, 1, 2] == 0.0


def test_model_accepts_sizes_not_divisible_by_32():
    model = build_model(model_cfg(), num_outputs=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 101, 75))
    assert out.shape == (1, 2, 101, 75)


def test_encoder_weights_from_local_safetensors_and_pth(tmp_path):
    source = build_model(model_cfg(), 1)
    state = {k: v.clone() for k, v in source.net.encoder.state_dict().items()}
    save_file(state, str(tmp_path / "enc.safetensors"))
    # A whole-model checkpoint with an "encoder." prefix and extra keys also works.
    torch.save(
        {f"encoder.{k}": v for k, v in state.items()} | {"head.w": torch.ones(1)},
        tmp_path / "full.pth",
    )
    for name in ("enc.safetensors", "full.pth"):
        loaded = build_model(model_cfg(encoder_weights=str(tmp_path / name)), 1)
        for key, value in loaded.net.encoder.state_dict().items():
            assert torch.equal(value, state[key]), (name, key)


def test_timm_universal_encoder_takes_timm_keys(tmp_path):
    cfg = model_cfg(encoder="tu-mobilenetv2_050")
    source = build_model(cfg, 1)
    timm_state = dict(source.net.encoder.model.state_dict())  # keys as timm names them
    save_file(timm_state, str(tmp_path / "timm.safetensors"))
    loaded = build_model(
        OmegaConf.merge(cfg, {"encoder_weights": str(tmp_path / "timm.safetensors")}), 1
    )
    for key, value in loaded.net.encoder.model.state_dict().items():
        assert torch.equal(value, timm_state[key]), key


def test_weights_for_another_encoder_are_refused(tmp_path):
    other = build_model(model_cfg(encoder="resnet18"), 1)
    save_file(dict(other.net.encoder.state_dict()), str(tmp_path / "r18.safetensors"))
    with pytest.raises(PodiumError, match="does not fit encoder"):
        build_model(model_cfg(encoder_weights=str(tmp_path / "r18.safetensors")), 1)
    with pytest.raises(PodiumError, match="no such file"):
        build_model(model_cfg(encoder_weights=str(tmp_path / "missing.pth")), 1)


HUB_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from omegaconf import OmegaConf
    from podium.config import compose_config
    from podium.io import PodiumError
    from podium.models import build_model
    cfg = OmegaConf.merge(compose_config("train", ["model=unet_mobilenet"]).model,
                          {"encoder_weights": "imagenet"})
    try:
        model = build_model(cfg, 1)
    except PodiumError as e:
        print("ERROR", e)
        sys.exit(3)
    torch.save(model.net.encoder.state_dict(), sys.argv[1])
    """
)


def run_hub_script(tmp_path, cache):
    env = podium_env() | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, str(tmp_path / "out.pt")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_imagenet_weights_arrive_through_the_hugging_face_cache(tmp_path):
    """Pre-populate a Hugging Face cache the way smp's hub download lays it out; offline, the
    real loading path (smp -> huggingface_hub) must find and load exactly those tensors."""
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders["mobilenet_v2"]["pretrained_settings"]["imagenet"]
    repo = "models--" + settings["repo_id"].replace("/", "--")
    snapshot = tmp_path / "hub" / repo / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    torch.manual_seed(123)
    reference = build_model(model_cfg(), 1).net.encoder.state_dict()
    save_file({k: v.clone() for k, v in reference.items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text("{}")
    proc = run_hub_script(tmp_path, tmp_path / "hub")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    arrived = torch.load(tmp_path / "out.pt")
    assert arrived.keys() == reference.keys()
    assert all(torch.equal(arrived[k], reference[k]) for k in reference)


def test_offline_without_cached_weights_is_a_clear_message(tmp_path):
    proc = run_hub_script(tmp_path, tmp_path / "empty-cache")
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    message = proc.stdout
    assert "model.encoder_weights" in message and "mobilenet_v2" in message
    assert "encoder_weights=null" in message and "local" in message


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED_WEIGHTS / "mobilenet_v2").is_dir(), reason="no shared weights")
def test_real_imagenet_mobilenet_v2_loads_through_local_path():
    from safetensors.torch import load_file

    path = SHARED_WEIGHTS / "mobilenet_v2" / "mobilenet_v2.torchvision_features.safetensors"
    model = build_model(model_cfg(encoder_weights=str(path)), 1)
    expected = load_file(str(path))
    got = model.net.encoder.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
