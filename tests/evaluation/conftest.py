import json

import pytest
import torch

from nemo_imagen.evaluation.torchvision_compat import ensure_torchvision_importable

# Before anything imports torchvision: with the CPU torch wheel and PyPI's torchvision (the eval extra) that
# import fails, and lightning / transformers / open_clip / timm all trigger it.
ensure_torchvision_importable()

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random-weight open_clip model saved as a local checkpoint: (model name, checkpoint, config json)."""
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("clip")
    config = folder / "TinyTestCLIP.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("TinyTestCLIP")
    checkpoint = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return "TinyTestCLIP", str(checkpoint), str(config)
