"""The nnkd network: an nnU-Net encoder/decoder with CBAM on the bottleneck and a class head.

``build_network`` has the signature of nnU-Net's static ``build_network_architecture`` so that
trainers return it from there and ``nnUNetPredictor`` rebuilds the same module at inference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import List, Optional, Union

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import Tensor, nn

from nnkd.errors import NNKDError
from nnkd.nets.cbam import CBAM, MODES as CBAM_MODES
from nnkd.nets.head import POOLS, ClassificationHead
from nnkd.nets.outputs import NetOutputs


@dataclass(frozen=True)
class NetworkSettings:
    """Head and CBAM settings, stored in the plans as ``plans['nnkd']['network']``."""

    num_classes: int  # 0: no classification head (a segmentation-only network, e.g. nnKDTrainerSegKD's student)
    cbam: bool = True
    cbam_reduction: int = 8
    # "plain" (the paper's CBAM output; model folders written before the field existed hold it),
    # "centred" or "centred_residual" (nnkd's default for new models): see nnkd.nets.cbam
    cbam_mode: str = "plain"
    head_hidden: int = 256
    head_dropout: float = 0.2
    # The next four default to the plain head (bottleneck average -> MLP), which is what model folders
    # written before they existed hold; nnkd's distillation plans set them (nnkd.plan.DEFAULTS).
    head_stages: Union[int, str] = 1  # deepest encoder stages pooled by the head, or "all"
    head_pool: str = "avg"  # "avg" or "avgmax"
    head_standardize: bool = False  # running per-feature standardisation of the pooled vector
    head_lr_scale: float = 1.0  # the head's learning rate relative to the rest (SGD), via its parametrisation

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_plans(cls, plans: dict) -> "NetworkSettings":
        """Read and validate ``plans['nnkd']['network']``; missing optional fields take the defaults."""
        where = f"nnU-Net plans {plans.get('plans_name', '?')!r} of dataset {plans.get('dataset_name', '?')!r}"
        section = plans.get("nnkd")
        section = section.get("network") if isinstance(section, dict) else None
        if not isinstance(section, dict):
            raise NNKDError(
                f"{where} have no 'nnkd.network' section, so they were not written by an nnkd trainer. "
                "Use the plans.json of an nnkd trainer's results folder (nnkd trainers write this section), "
                'or add {"nnkd": {"network": {"num_classes": K}}} to the plans.')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise NNKDError(f"{where}: unknown field(s) {unknown} in nnkd.network; known: {sorted(known)}")
        if "num_classes" not in section:
            raise NNKDError(f"{where}: nnkd.network.num_classes is required (number of case-level classes)")
        bad = [f"nnkd.network.{name} must be {expected}, got {section[name]!r}"
               for name, (valid, expected) in _RULES.items() if name in section and not valid(section[name])]
        if bad:
            raise NNKDError(f"{where}: " + "; ".join(bad))
        return cls(**section)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_RULES = {  # field -> (validator, what the message asks for)
    "num_classes": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: no classification head)"),
    "cbam": (lambda v: isinstance(v, bool), "true or false"),
    "cbam_reduction": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "cbam_mode": (lambda v: v in CBAM_MODES, " or ".join(f'"{m}"' for m in CBAM_MODES)),
    "head_hidden": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "head_dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                     "a number in [0, 1)"),
    "head_stages": (lambda v: v == "all" or (_is_int(v) and v >= 1), 'an integer >= 1 or "all"'),
    "head_pool": (lambda v: v in POOLS, " or ".join(f'"{p}"' for p in POOLS)),
    "head_standardize": (lambda v: isinstance(v, bool), "true or false"),
    "head_lr_scale": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0"),
}


class NNKDNetwork(nn.Module):
    """nnU-Net U-Net whose bottleneck goes through CBAM, plus a case-level classification head.

    ``unet`` is any dynamic_network_architectures U-Net with an ``encoder`` returning the list of
    stage outputs (``return_skips=True``) and a ``decoder`` consuming it (PlainConvUNet,
    ResidualEncoderUNet). Its encoder and decoder are registered here under the same names, so the
    shared part of the state dict has nnU-Net's key names (``encoder.*``, ``decoder.*``) next to
    ``cbam.*`` and ``head.*``, and ``network.decoder.deep_supervision`` is what nnU-Net toggles.

    ``forward(x)`` returns exactly what the plain U-Net returns (segmentation logits, a list under
    deep supervision, full resolution first) and never evaluates the head. ``forward(x, return_all=True)``
    returns :class:`NetOutputs` with the class logits ``(B, K)`` (``None`` when ``num_classes`` is 0: no head), the encoder features (the last one
    after CBAM), the CBAM map ``(B, 1, *bottleneck)`` (``None`` without CBAM),
    ``extras['pre_cbam']`` (the bottleneck before CBAM, for liveness statistics) and
    ``extras['classify']`` (the logits as a function of the bottleneck's global average ``(B, C)``, any
    other pooled feature of the head fixed at this batch's values: what Grad-CAM needs) and
    ``extras['classify_stage'](stage)``, the same for any stage the head pools. The head pools
    the deepest ``head_stages`` stage outputs (see :mod:`nnkd.nets.head`). The flag (rather than a
    second method) lets a trainer call through the DDP wrapper so gradients are synchronised.
    """

    def __init__(self, unet: nn.Module, num_classes: int, spatial_dims: int, cbam: bool = True,
                 cbam_reduction: int = 8, cbam_mode: str = "plain", head_hidden: int = 256, head_dropout: float = 0.2,
                 head_stages: Union[int, str] = 1, head_pool: str = "avg", head_standardize: bool = False,
                 head_lr_scale: float = 1.0):
        super().__init__()
        encoder, decoder = getattr(unet, "encoder", None), getattr(unet, "decoder", None)
        if encoder is None or decoder is None or not getattr(encoder, "return_skips", False):
            raise NNKDError(f"network architecture {type(unet).__name__} is not supported by nnkd: it needs an "
                            "'encoder' that returns every stage's output and a 'decoder' "
                            "(PlainConvUNet, ResidualEncoderUNet)")
        self.encoder = encoder
        self.decoder = decoder
        self.spatial_dims = spatial_dims
        bottleneck = self.stage_widths[-1]
        self.cbam = CBAM(bottleneck, spatial_dims, reduction=cbam_reduction, mode=cbam_mode) if cbam else None
        widths = self.stage_widths
        if head_stages != "all" and not 1 <= int(head_stages) <= len(widths):
            raise NNKDError(f"head_stages {head_stages} is not within 1..{len(widths)} (the encoder's stages)")
        pooled = widths if head_stages == "all" else widths[len(widths) - int(head_stages):]
        self.head = ClassificationHead(pooled, num_classes, hidden=head_hidden, dropout=head_dropout, pool=head_pool,
                                       standardize=head_standardize, lr_scale=head_lr_scale) if num_classes else None

    @property
    def stage_widths(self) -> List[int]:
        """Channels of each encoder stage output, shallow to deep."""
        return [int(c) for c in self.encoder.output_channels]

    def forward(self, x: Tensor, return_all: bool = False) -> Union[Tensor, List[Tensor], NetOutputs]:
        skips = list(self.encoder(x))
        attention: Optional[Tensor] = None
        pre_cbam = skips[-1]
        if self.cbam is not None:
            skips[-1], attention = self.cbam(skips[-1])
        seg = self.decoder(skips)
        if not return_all:
            return seg
        if self.head is None:  # segmentation-only network: no class logits
            return NetOutputs(seg=seg, logits=None, features=skips, attention=attention, extras={"pre_cbam": pre_cbam})
        return NetOutputs(seg=seg, logits=self.head(skips), features=skips, attention=attention,
                          extras={"classify": self.head.classify_last_average(skips), "pre_cbam": pre_cbam,
                                  "classify_stage": partial(self.head.classify_stage_average, skips)})

    def classify_logits(self, x: Tensor) -> Tensor:
        """Class logits ``(B, K)`` for an input batch (inference convenience)."""
        return self.forward(x, return_all=True).logits


def build_network(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                  enable_deep_supervision: bool = True) -> NNKDNetwork:
    """Same signature as ``nnUNetTrainer.build_network_architecture``; settings from ``plans['nnkd']['network']``."""
    settings = NetworkSettings.from_plans(plans_manager.plans)
    unet = get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_output_channels,
        allow_init=True,
        deep_supervision=enable_deep_supervision,
    )
    options = {k: v for k, v in settings.to_dict().items() if k != "num_classes"}
    return NNKDNetwork(unet, settings.num_classes, len(configuration_manager.patch_size), **options)
