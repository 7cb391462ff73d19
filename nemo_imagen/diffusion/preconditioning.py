"""Pick the preconditioning (and its config dataclass) named by `model.preconditioning_type`."""
from .config import DDPMConfig, EDMConfig
from .ddpm import ContinuousDDPM
from .edm import EDMPreconditioning

_PRECONDITIONINGS = {"EDM": (EDMConfig, EDMPreconditioning), "DDPM": (DDPMConfig, ContinuousDDPM)}


def _lookup(preconditioning_type: str):
    if preconditioning_type not in _PRECONDITIONINGS:
        raise ValueError(
            f"preconditioning_type: {preconditioning_type!r} is not one of {', '.join(_PRECONDITIONINGS)}"
        )
    return _PRECONDITIONINGS[preconditioning_type]


def preconditioning_config_class(preconditioning_type: str):
    """The dataclass of the `model.preconditioning` block: `EDM` -> EDMConfig, `DDPM` -> DDPMConfig."""
    return _lookup(preconditioning_type)[0]


def build_preconditioning(preconditioning_type: str, cfg):
    """EDMPreconditioning(cfg) for `EDM`, ContinuousDDPM(cfg) for `DDPM`.

    cfg: the matching config dataclass instance (validated on construction).
    """
    config_class, preconditioning_class = _lookup(preconditioning_type)
    if not isinstance(cfg, config_class):
        raise ValueError(
            f"preconditioning: preconditioning_type {preconditioning_type!r} needs a {config_class.__name__}, "
            f"got {type(cfg).__name__}"
        )
    return preconditioning_class(cfg)
