"""Models: any segmentation_models_pytorch architecture x encoder, by name, with input padding.

`build_model` returns a `SegmentationModel`: the smp network plus the two things competitions
need around it — inputs of any size (padded to the encoder's stride and cropped back, so no
"divisible by 32" errors) and the normalisation constants (kept here, not fetched from the hub).

Pretrained encoder weights (`model.encoder_weights`):
- `imagenet` (or another smp weight name): the real smp/timm path through the Hugging Face cache.
  Offline with nothing cached is a PodiumError that says how to fix it.
- a path to a `.pth`/`.pt`/`.safetensors` state dict of the encoder: loaded locally, and every
  encoder tensor must arrive (the count is logged).
- null: random initialisation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from podium import distributed as dist
from podium import rundir
from podium.io import PodiumError

log = logging.getLogger(__name__)

__all__ = [
    "SegmentationModel", "build_model", "load_encoder_weights", "pad_to_multiple",
    "resolve_device", "resolve_precision", "autocast", "to_input", "probabilities", "binarize",
    "load_run_model", "predict_logits", "predict_outputs", "split_output", "join_output",
    "strip_compile_prefix", "AUX_HEADS", "read_state_dict", "checkpoint_weights",
]  # fmt: skip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
AUX_HEADS = ("none", "empty")  # model.aux_head


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "reflect", value: float = 0.0
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad NCHW `x` on all sides so H and W are multiples of `multiple`.

    Returns the padded tensor and (left, right, top, bottom) for `unpad`. The padding is split
    evenly so the image stays centred. Reflect padding needs the pad to be smaller than the
    image; for tiny images it falls back to edge replication.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph == 0 and pw == 0:
        return x, pads
    if mode == "constant":
        return F.pad(x, pads, mode="constant", value=value), pads
    if mode == "reflect" and (max(pads[:2]) >= w or max(pads[2:]) >= h):
        mode = "replicate"
    return F.pad(x, pads, mode=mode), pads


def unpad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


class SegmentationModel(nn.Module):
    """An smp network that takes any input size and keeps its normalisation constants.

    With an image-level head (`model.aux_head=empty`: smp's `aux_params`, one output) the
    forward pass returns, as smp does, the pair (mask logits NxCxHxW, logits N of "the mask is
    not empty"); without one, the mask logits alone. `split_output` is the one place callers
    turn either form into (mask logits, non-empty logits or None)."""

    def __init__(
        self,
        net: nn.Module,
        stride: int,
        pad_mode: str = "reflect",
        pad_value: float = 0.0,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ):
        super().__init__()
        self.net = net
        self.stride = stride
        self.pad_mode, self.pad_value = pad_mode, pad_value
        self.mean, self.std = tuple(mean), tuple(std)
        self.has_empty_head = getattr(net, "classification_head", None) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        padded, pads = pad_to_multiple(x, self.stride, self.pad_mode, self.pad_value)
        out = self.net(padded)
        if isinstance(out, tuple):  # smp with aux_params: (masks, labels Nx1)
            masks, nonempty = out
            return unpad(masks, pads), nonempty[:, 0]
        return unpad(out, pads)


def split_output(
    output: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mask logits, logits of "the mask is not empty" or None) of a model's forward output."""
    if isinstance(output, tuple):
        return output[0], output[1]
    return output, None


def join_output(
    masks: torch.Tensor, nonempty: torch.Tensor | None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `split_output`: the form a model with or without the head returns."""
    return masks if nonempty is None else (masks, nonempty)


def build_model(cfg: DictConfig, num_outputs: int, in_channels: int = 3) -> SegmentationModel:
    """Build `cfg.arch` with encoder `cfg.encoder` (the `model` config group)."""
    weights = cfg.encoder_weights
    local_file = weights is not None and _looks_like_path(str(weights))
    aux_head = str(cfg.get("aux_head") or "none")
    if aux_head not in AUX_HEADS:
        raise PodiumError(f"model.aux_head={aux_head}: expected {' | '.join(AUX_HEADS)}")
    extra = dict(cfg.get("kwargs") or {})
    if aux_head == "empty":  # one logit per image: "is anything here?", on the deepest features
        dropout = float(cfg.get("aux_dropout") or 0.0)
        extra["aux_params"] = {"classes": 1, "dropout": dropout or None}
    hub_weights = None if (weights is None or local_file) else weights
    if hub_weights is not None and cfg.encoder.startswith("tu-"):
        hub_weights = True  # timm-universal encoders take a flag; the tag is in the name
    try:
        with _quiet_hub_retries():
            net = smp.create_model(
                cfg.arch,
                encoder_name=cfg.encoder,
                encoder_weights=hub_weights,
                in_channels=in_channels,
                classes=num_outputs,
                **extra,
            )
    except KeyError as e:
        raise PodiumError(f"model: {e.args[0] if e.args else e}") from None
    except Exception as e:  # the hub raises many types; all mean "weights not reachable"
        if hub_weights is not None and _is_hub_failure(e):
            raise PodiumError(_offline_message(cfg.encoder, weights)) from None
        raise
    model = SegmentationModel(
        net,
        stride=int(getattr(net.encoder, "output_stride", 32)),
        pad_mode=cfg.pad_mode,
        pad_value=float(cfg.pad_value),
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
    )
    if local_file:
        load_encoder_weights(model, Path(str(weights)))
    return model


def load_encoder_weights(model: SegmentationModel, path: Path) -> int:
    """Load an encoder state dict from a local file; every encoder tensor must arrive.

    Accepts the encoder's own keys, timm-model keys for `tu-` encoders (smp keeps the timm model
    under `encoder.model`), and whole-model files with an `encoder.` prefix. Classifier heads and
    other extra keys are ignored. Returns the number of tensors loaded.
    """
    state = read_state_dict(path)
    encoder = model.net.encoder
    wanted = encoder.state_dict()
    best: dict[str, torch.Tensor] = {}
    for prefix_in, prefix_out in (("", ""), ("", "model."), ("encoder.", ""), ("net.encoder.", "")):
        candidate = {
            prefix_out + k[len(prefix_in) :]: v
            for k, v in state.items()
            if k.startswith(prefix_in) and prefix_out + k[len(prefix_in) :] in wanted
        }
        if len(candidate) > len(best):
            best = candidate
    missing = [k for k in wanted if k not in best]
    shape_errors = [k for k, v in best.items() if v.shape != wanted[k].shape]
    if missing or shape_errors:
        first = (missing or shape_errors)[0]
        raise PodiumError(
            f"model.encoder_weights: {path} does not fit encoder {type(encoder).__name__}: "
            f"{len(missing)} tensors missing, {len(shape_errors)} of the wrong shape "
            f"(first: {first})"
        )
    encoder.load_state_dict(best, strict=True)
    log.info("loaded %d/%d encoder tensors from %s", len(best), len(wanted), path)
    return len(best)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file (`model.encoder_weights=PATH`): a `.safetensors`
    file, or a torch file holding a state dict (or {"state_dict": ...}), loaded without running
    any code. A missing or unreadable file is a one-line error."""
    if not path.is_file():
        raise PodiumError(f"model.encoder_weights: {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PodiumError(f"model.encoder_weights: {path}: cannot load ({e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


@contextlib.contextmanager
def _quiet_hub_retries():
    """Offline, huggingface_hub logs a warning per retry (five, ~23 s) on every rank before it
    gives up; podium's one-line message below says what they would, and how to fix it."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _looks_like_path(value: str) -> bool:
    return value.endswith(WEIGHT_FILE_SUFFIXES) or os.sep in value


def _is_hub_failure(error: Exception) -> bool:
    names = {type(e).__name__ for e in _chain(error)}
    hub_errors = {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "ConnectionError",
        "HfHubHTTPError",
        "MaxRetryError",
        "NameResolutionError",
        "ConnectTimeout",
        "RepositoryNotFoundError",
    }
    return bool(names & hub_errors) or "offline" in str(error).lower()


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _offline_message(encoder: str, weights: str) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return (
        f"model.encoder_weights={weights}: pretrained weights for encoder '{encoder}' are not in "
        f"the Hugging Face cache ({cache}) and the hub cannot be reached. Fix: run once with "
        f"internet (or copy a filled cache there), or set model.encoder_weights=PATH to a local "
        f".pth/.safetensors file, or model.encoder_weights=null to train from scratch"
    )


# =============================================================================================
# Running a model: what training, validation, prediction and reports share.
def resolve_device(cpu_threads: int | str | None = None, processes: int = 1) -> torch.device:
    """This process's GPU, else the CPU, with torch's thread count set by `cpu_threads` for
    `processes` processes sharing the cores (`distributed.choose_cpu_threads`; None: unset)."""
    if torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank())
    if cpu_threads is not None:
        threads, why = dist.choose_cpu_threads(cpu_threads, processes)
        torch.set_num_threads(threads)
        log.info("CPU: %d torch thread%s (%s)", threads, "s" * (threads > 1), why)
    return torch.device("cpu")


def resolve_precision(value: str, device: torch.device) -> str:
    """auto: bf16 on GPUs that support it, else fp16 on CUDA; fp32 on CPU (CPU autocast rarely
    pays off for convolutions)."""
    if value != "auto":
        if value not in ("bf16", "fp16", "fp32"):
            raise PodiumError(f"trainer.precision={value}: expected auto | bf16 | fp16 | fp32")
        return value
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_input(images: torch.Tensor, model: SegmentationModel, device, memory_format):
    """uint8 NCHW -> normalised float on the device."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(model.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=memory_format)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return logits.softmax(1) if task == "multiclass" else logits.sigmoid()


def binarize(probs: np.ndarray, task: str, threshold: float) -> np.ndarray:
    """Hard masks from CxHxW probabilities: HxW for binary/multiclass, CxHxW for multilabel."""
    if task == "multiclass":
        return probs.argmax(0).astype(np.uint8)
    hard = (probs > threshold).astype(np.uint8)
    return hard[0] if task == "binary" else hard


def load_run_model(run_dir: Path, checkpoint: str = "best", weights: str = "ema"):
    """(model, config) of a finished run, with its EMA (or raw) weights, in eval mode on CPU.
    No pretrained weights are fetched: the run's weights replace them anyway."""
    saved = rundir.load_checkpoint(rundir.checkpoint_path(run_dir, checkpoint))
    cfg = OmegaConf.create(saved["config"])
    model_cfg = OmegaConf.merge(cfg.model, {"encoder_weights": None})
    competition_outputs = 1 if cfg.competition.task == "binary" else len(cfg.competition.classes)
    model = build_model(model_cfg, competition_outputs, int(cfg.competition.in_channels))
    model.load_state_dict(strip_compile_prefix(checkpoint_weights(saved, weights)))
    return model.eval(), cfg


def checkpoint_weights(saved: dict, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The model state dict of a loaded checkpoint: its EMA's (`weights="ema"`, when it has
    one) or the raw model's."""
    if weights == "ema" and saved.get("ema") is not None:
        return {k[len("module.") :]: v for k, v in saved["ema"].items() if k.startswith("module.")}
    return saved["model"]


_COMPILE_PREFIX = re.compile(r"(^|\.)_orig_mod\.")


def strip_compile_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the `_orig_mod.` that a torch.compile'd module puts in its keys removed
    (`_orig_mod.net.x`, `module._orig_mod.net.x` for an EMA of one): podium saves the plain
    module's weights, but checkpoints from elsewhere, or older ones, may carry it
    (Lightning-AI/pytorch-lightning#17415)."""
    return {_COMPILE_PREFIX.sub(r"\1", key, count=1): value for key, value in state.items()}


@torch.inference_mode()
def predict_outputs(
    model: SegmentationModel, images: torch.Tensor, device, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float (mask logits, non-empty logits or None) of a uint8 NCHW batch: the one forward
    pass prediction code shares."""
    x = to_input(images, model, device, torch.channels_last)
    with autocast(device, precision):
        masks, nonempty = split_output(model(x))
    return masks.float(), None if nonempty is None else nonempty.float()


def predict_logits(model: SegmentationModel, images: torch.Tensor, device, precision="fp32"):
    """Float mask logits of a uint8 NCHW batch (the image-level head's output, if any, is
    dropped: `predict_outputs` keeps it)."""
    return predict_outputs(model, images, device, precision)[0]
