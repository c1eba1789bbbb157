"""Classification models (any timm model by name) and losses (BCE, cross-entropy, focal).

`model=timm_classifier model.name=resnet18`: timm's network with its head resized to the
competition's classes. `model.encoder_weights` works as for segmentation (podium.models):
`imagenet` (or another timm tag) through the Hugging Face cache, with the same one-line
message when offline with nothing cached; a path to a local `.pth`/`.safetensors` file, where
every tensor but the classifier head must arrive; null trains from scratch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from podium import rundir
from podium.io import PodiumError
from podium.losses import WeightedLoss
from podium.models import (
    _is_hub_failure,
    _looks_like_path,
    _offline_message,
    _quiet_hub_retries,
    checkpoint_weights,
    read_state_dict,
)

log = logging.getLogger(__name__)

__all__ = [
    "ARCH",
    "ClassifierModel",
    "build_classifier",
    "load_backbone_weights",
    "build_classification_loss",
    "load_classifier_run",
    "class_probabilities",
]

ARCH = "timm_classifier"  # model.arch of configs/model/timm_classifier.yaml
CLASSIFICATION_TERMS = ("bce", "ce", "focal")  # loss.weights keys a classification loss takes


class ClassifierModel(nn.Module):
    """A timm network and its normalisation constants (`to_input` reads them): N x C logits."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_classifier(cfg: DictConfig, num_classes: int, in_channels: int = 3) -> ClassifierModel:
    """timm model `cfg.name` with `num_classes` outputs and the weights `cfg.encoder_weights`."""
    import timm

    weights = cfg.encoder_weights
    local_file = weights is not None and _looks_like_path(str(weights))
    hub = weights is not None and not local_file
    name = str(cfg.name) if hub and str(weights) == "imagenet" else _tagged(cfg.name, weights, hub)
    kwargs = dict(cfg.get("kwargs") or {})
    try:
        with _quiet_hub_retries():
            net = timm.create_model(
                name,
                pretrained=hub,
                num_classes=num_classes,
                in_chans=in_channels,
                drop_rate=float(cfg.get("drop_rate", 0.0)),
                **kwargs,
            )
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise PodiumError(f"model.name={cfg.name}: not a timm model ({e})") from None
        if hub and _is_hub_failure(e):
            raise PodiumError(_offline_message(str(cfg.name), weights)) from None
        raise
    except Exception as e:  # the hub raises many types; all mean "weights not reachable"
        if hub and _is_hub_failure(e):
            raise PodiumError(_offline_message(str(cfg.name), weights)) from None
        raise
    model = ClassifierModel(net, tuple(cfg.mean), tuple(cfg.std))
    if local_file:
        load_backbone_weights(model, Path(str(weights)))
    return model


def _tagged(name: str, weights, hub: bool) -> str:
    """timm's `name.tag` for pretrained weights other than the default (e.g. `a1_in1k`)."""
    return f"{name}.{weights}" if hub and "." not in str(name) else str(name)


def load_backbone_weights(model: ClassifierModel, path: Path) -> int:
    """Load a timm state dict from a local file into everything but the classifier head (its
    class count is the competition's); every other tensor must arrive. Returns the count."""
    state = read_state_dict(path)
    net = model.net
    head = {f"{n}" for n, _ in net.get_classifier().named_parameters(prefix=_head_prefix(net))}
    wanted = {k: v for k, v in net.state_dict().items() if k not in head}
    found = {k: v for k, v in state.items() if k in wanted}
    missing = [k for k in wanted if k not in found]
    wrong = [k for k, v in found.items() if v.shape != wanted[k].shape]
    if missing or wrong:
        raise PodiumError(
            f"model.encoder_weights: {path} does not fit {type(net).__name__}: {len(missing)} "
            f"tensors missing, {len(wrong)} of the wrong shape (first: {(missing or wrong)[0]})"
        )
    net.load_state_dict(found, strict=False)
    log.info("loaded %d/%d backbone tensors from %s", len(found), len(wanted), path)
    return len(found)


def _head_prefix(net: nn.Module) -> str:
    classifier = net.get_classifier()
    for name, module in net.named_modules():
        if module is classifier:
            return name
    return ""


# -- losses -------------------------------------------------------------------------------------
class BinaryCrossEntropy(nn.Module):
    """Mean BCE with logits over images and classes (one-hot targets when multi-class)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class CrossEntropy(nn.Module):
    """Softmax cross-entropy against the one-hot target's class."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target.argmax(1))


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017), (1 - p_t)^gamma-weighted cross-entropy: per class with
    sigmoids when multi-label (alpha weighs the positives), over the softmax when multi-class."""

    def __init__(self, multi_label: bool, gamma: float, alpha: float | None):
        super().__init__()
        self.multi_label, self.gamma, self.alpha = multi_label, float(gamma), alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        if self.multi_label:
            ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            p = logits.sigmoid()
            p_t = p * target + (1 - p) * (1 - target)
            loss = ce * (1 - p_t) ** self.gamma
            if self.alpha is not None:
                loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
            return loss.mean()
        log_p = logits.log_softmax(1).gather(1, target.argmax(1, keepdim=True)).squeeze(1)
        return (-((1 - log_p.exp()) ** self.gamma) * log_p).mean()


def build_classification_loss(cfg: DictConfig, multi_label: bool) -> WeightedLoss:
    """The weighted sum of `cfg.weights` (bce, ce, focal) for image-level targets."""
    factories = {
        "bce": BinaryCrossEntropy,
        "ce": CrossEntropy,
        "focal": lambda: FocalLoss(multi_label, cfg.focal.gamma, cfg.focal.alpha),
    }
    weights = {name: float(w) for name, w in cfg.weights.items() if w}
    unknown = sorted(set(weights) - set(factories))
    if unknown:  # the schema's task rule says it first; this guards direct callers
        raise PodiumError(f"loss.weights.{unknown[0]}: not a classification loss (bce, ce, focal)")
    return WeightedLoss({name: factories[name]() for name in weights}, weights)


def class_probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return logits.sigmoid() if multi_label else logits.softmax(1)


# -- a finished run -------------------------------------------------------------------------------
def load_classifier_run(run_dir: Path, checkpoint: str = "best", weights: str = "ema"):
    """(model, config) of a finished classification run, in eval mode on CPU."""
    saved = rundir.load_checkpoint(rundir.checkpoint_path(run_dir, checkpoint))
    cfg = OmegaConf.create(saved["config"])
    model_cfg = OmegaConf.merge(cfg.model, {"encoder_weights": None})
    classes = len(cfg.competition.classes)
    model = build_classifier(model_cfg, classes, int(cfg.competition.in_channels))
    model.load_state_dict(checkpoint_weights(saved, weights))
    return model.eval(), cfg
