"""CLIP score against a hand computation with a tiny random-weight open_clip model saved locally."""
import numpy as np
import pytest
import torch
from PIL import Image

from nemo_imagen.evaluation.clip_score import ClipScorer

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def test_matches_hand_computation(tiny_clip):
    import open_clip

    name, checkpoint, config = tiny_clip
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(3)]
    captions = ["a red circle", "a photo of a large green square on the left", "an orange triangle"]
    scorer = ClipScorer(name, checkpoint, "cpu", config)
    scores = scorer.similarities(images, captions)

    model = open_clip.create_model(name)
    model.load_state_dict(torch.load(checkpoint))
    model.eval()
    # by hand: bicubic resize to the 32x32 input, scale to [0, 1], OpenAI CLIP normalisation
    pixels = np.stack([(np.asarray(image.resize((32, 32), Image.BICUBIC)) / 255.0 - OPENAI_MEAN) / OPENAI_STD
                       for image in images])
    with torch.no_grad():
        image_embeds = model.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2).float()).double().numpy()
        text_embeds = model.encode_text(open_clip.tokenize(captions)).double().numpy()
    expected = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(image_embeds, text_embeds)]
    assert scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert abs(float(scores.mean())) > 1e-4  # random weights still give a non-trivial number to check


def test_missing_checkpoint_and_unknown_model_are_named(tiny_clip, tmp_path):
    pytest.importorskip("open_clip")
    with pytest.raises(FileNotFoundError, match="clip.checkpoint"):
        ClipScorer("ViT-L-14", str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="clip.model: 'NoSuchCLIP'"):
        ClipScorer("NoSuchCLIP", tiny_clip[1])
    torchscript = tmp_path / "openai_style.pt"  # OpenAI's releases are TorchScript archives (QuickGELU models)
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(torchscript))
    with pytest.raises(ValueError, match="OpenAI checkpoint; use TinyTestCLIP-quickgelu"):
        ClipScorer(tiny_clip[0], str(torchscript))
