"""Typed config of the ``model.data`` YAML block (the webdataset training pipeline).

Key names follow NeMo's Imagen configs where NeMo had them (``num_workers``, ``synthetic_data``,
``train.dataset_path``, ``train.augmentations.{resize_smallest_side, center_crop_h_w, horizontal_flip}``,
``train.filterings.resolution.{method, value}``, ``train.target_resolutions``,
``webdataset.infinite_sampler``). The dataclasses are OmegaConf-structured compatible (no Union, lists
through ``default_factory``); ``__post_init__`` checks values when the merged YAML is turned into
objects, and every error message starts with the offending key (``data.train....``).

Example (a base 64x64 stage)::

    data:
      num_workers: 2
      train:
        dataset_path: ['demo_data/train-{000000..000005}.tar']  # quote brace patterns in YAML
        augmentations: {resize_smallest_side: 64, center_crop_h_w: '64, 64', horizontal_flip: False}
        filterings: {resolution: {method: larger, value: 64}}
        target_resolutions: [64]
      webdataset: {infinite_sampler: False, shuffle_buffer: 1000}
"""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from nemo_imagen.config_checks import is_int

RESOLUTION_FILTER_METHODS = ("larger", "smaller")


def _check_positive_int(value, key: str) -> None:
    if not is_int(value) or value <= 0:
        raise ValueError(f"{key}: {value!r} is not a positive integer")


def parse_crop_h_w(value: str, key: str = "data.train.augmentations.center_crop_h_w") -> Tuple[int, int]:
    """Parse NeMo's ``center_crop_h_w`` string (``"64, 64"``) into ``(height, width)``."""
    parts = [part.strip() for part in str(value).split(",")]
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError(f"{key}: {value!r} is not of the form 'height, width' (e.g. '64, 64')")
    height, width = int(parts[0]), int(parts[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"{key}: {value!r} must have a positive height and width")
    return height, width


@dataclass
class ResolutionFilterConfig:
    """Keep an image only if both of its sides are ``>= value`` (method ``larger``) or ``<= value``
    (method ``smaller``), measured on the decoded image before any resize."""

    method: str = "larger"
    value: int = 64

    def __post_init__(self) -> None:
        key = "data.train.filterings.resolution"
        if self.method not in RESOLUTION_FILTER_METHODS:
            raise ValueError(f"{key}.method: {self.method!r} is not one of {', '.join(RESOLUTION_FILTER_METHODS)}")
        _check_positive_int(self.value, f"{key}.value")


@dataclass
class FilteringConfig:
    """``data.train.filterings``: sample filters applied after decoding (null = keep everything)."""

    resolution: Optional[ResolutionFilterConfig] = None


@dataclass
class AugmentationConfig:
    """``data.train.augmentations``, applied in this order to every decoded image.

    Attributes:
        resize_smallest_side: bicubic (antialiased) resize so that the short side has this many
            pixels, keeping the aspect ratio; null = no resize.
        center_crop_h_w: ``"height, width"`` of the crop (NeMo's spelling); it must be the square of
            the largest ``target_resolutions`` entry, since every batch holds square images of that size.
        random_crop: take the crop at a uniformly random position instead of the centre
            (scale-preserving random crop: nothing is rescaled).
        horizontal_flip: mirror the image left-right with probability 0.5. Leave it off when captions
            name left and right (the demo data does).
    """

    resize_smallest_side: Optional[int] = 64
    center_crop_h_w: Optional[str] = "64, 64"
    random_crop: bool = False
    horizontal_flip: bool = False

    def __post_init__(self) -> None:
        key = "data.train.augmentations"
        if self.resize_smallest_side is not None:
            _check_positive_int(self.resize_smallest_side, f"{key}.resize_smallest_side")
        if self.center_crop_h_w is not None:
            parse_crop_h_w(self.center_crop_h_w, f"{key}.center_crop_h_w")


@dataclass
class TrainDataConfig:
    """``data.train``.

    Attributes:
        dataset_path: webdataset shard files (``.tar``); each entry may be a brace pattern
            (``shards/train-{000000..000009}.tar``). Every file must exist when the dataloader is built.
        augmentations: resize, crop and flip (see ``AugmentationConfig``).
        filterings: optional filters (``resolution: {method, value}``).
        target_resolutions: square sizes the batch carries, ascending: ``[64]`` for a base stage,
            ``[64, 256]`` for SR256 (the 64x64 image is the bicubic downsample of the 256x256 crop).
    """

    dataset_path: List[str] = field(default_factory=list)
    augmentations: AugmentationConfig = field(default_factory=AugmentationConfig)
    filterings: Optional[FilteringConfig] = None
    target_resolutions: List[int] = field(default_factory=lambda: [64])

    def __post_init__(self) -> None:
        key = "data.train"
        resolutions = list(self.target_resolutions)
        if not resolutions:
            raise ValueError(f"{key}.target_resolutions: must name at least one resolution")
        for value in resolutions:
            _check_positive_int(value, f"{key}.target_resolutions")
        if resolutions != sorted(set(resolutions)):
            raise ValueError(f"{key}.target_resolutions: {resolutions} must be strictly increasing")
        top = resolutions[-1]
        augment = self.augmentations
        if augment.center_crop_h_w is None:
            raise ValueError(
                f"{key}.augmentations.center_crop_h_w: must be set (e.g. '{top}, {top}'): batches hold "
                f"square images of the largest target resolution {top}"
            )
        if parse_crop_h_w(augment.center_crop_h_w) != (top, top):
            raise ValueError(
                f"{key}.augmentations.center_crop_h_w: {augment.center_crop_h_w!r} must be '{top}, {top}', "
                f"the largest of {key}.target_resolutions {resolutions}"
            )
        if augment.resize_smallest_side is not None and augment.resize_smallest_side < top:
            raise ValueError(
                f"{key}.augmentations.resize_smallest_side: {augment.resize_smallest_side} is smaller than "
                f"the crop {top}"
            )


@dataclass
class WebdatasetConfig:
    """``data.webdataset``.

    Attributes:
        infinite_sampler: False = finite epochs (each rank reads its part of the data once per epoch);
            True = every dataloader worker draws shards at random with replacement, forever (long runs
            with ``trainer.max_steps``).
        shuffle_buffer: samples held in each worker's shuffle buffer (0 or 1 = no sample shuffling;
            shard order is shuffled either way).
    """

    infinite_sampler: bool = False
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        if not is_int(self.shuffle_buffer) or self.shuffle_buffer < 0:
            raise ValueError(f"data.webdataset.shuffle_buffer: {self.shuffle_buffer!r} is not a non-negative integer")


@dataclass
class DataConfig:
    """``model.data``.

    Attributes:
        num_workers: dataloader worker processes per rank (0 = load in the training process).
        synthetic_data: train on random tensors (``nemo_imagen.data.synthetic``) instead of shards.
        synthetic_data_length: samples per rank per epoch of the synthetic data.
        train: the shards and their processing.
        webdataset: sampling mode and shuffling.
        max_bad_fraction: the run stops (``DataFaultError``) when more than this fraction of the samples
            a rank has read were faulty (unreadable shard, missing entry, undecodable image, caption or
            embedding; not samples removed by ``filterings``); 1.0 = never stop.
        bad_fraction_min_samples: the fraction is checked once a rank has read this many samples.
    """

    num_workers: int = 2
    synthetic_data: bool = False
    synthetic_data_length: int = 10000
    train: TrainDataConfig = field(default_factory=TrainDataConfig)
    webdataset: WebdatasetConfig = field(default_factory=WebdatasetConfig)
    max_bad_fraction: float = 0.1
    bad_fraction_min_samples: int = 1000

    def __post_init__(self) -> None:
        if not is_int(self.num_workers) or self.num_workers < 0:
            raise ValueError(f"data.num_workers: {self.num_workers!r} is not a non-negative integer")
        _check_positive_int(self.synthetic_data_length, "data.synthetic_data_length")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"data.max_bad_fraction: {self.max_bad_fraction!r} is not in [0, 1]")
        _check_positive_int(self.bad_fraction_min_samples, "data.bad_fraction_min_samples")
