"""CLIP score: the mean cosine similarity between open_clip image and caption embeddings."""
import zipfile
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from PIL import Image


class ClipScorer:
    """An open_clip model from a local checkpoint (nothing is downloaded).

    model_name: an open_clip architecture (ViT-L-14 as in NeMo's evaluation); model_config: optionally a JSON
    file defining a custom architecture, registered under the file's stem (which must equal model_name)."""

    def __init__(self, model_name: str, checkpoint: str, device="cpu", model_config: Optional[str] = None):
        import open_clip

        if not checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(f"clip.checkpoint: {checkpoint} not found (a local open_clip checkpoint)")
        if model_config:
            if not Path(model_config).is_file():
                raise FileNotFoundError(f"clip.model_config: {model_config} not found")
            if Path(model_config).stem != model_name:
                raise ValueError(f"clip.model: {model_name!r} must be the stem of clip.model_config {model_config}")
            open_clip.add_model_config(model_config)
        if model_name not in open_clip.list_models():
            raise ValueError(f"clip.model: {model_name!r} is not an open_clip architecture")
        if _is_torchscript(checkpoint) and not open_clip.get_model_config(model_name).get("quick_gelu", False):
            # OpenAI's released .pt files are TorchScript archives of models trained with QuickGELU; loaded into
            # the GELU architecture they give wrong embeddings without any error.
            raise ValueError(f"clip.model: {checkpoint} is an OpenAI checkpoint; use {model_name}-quickgelu")
        self.device = torch.device(device)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=checkpoint, device=self.device
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.name = model_name

    @torch.no_grad()
    def similarities(self, images: Sequence[Image.Image], captions: List[str]) -> torch.Tensor:
        """[B] float64 cosine similarity of each image with its caption."""
        if len(images) != len(captions):
            raise ValueError(f"clip score: {len(images)} images but {len(captions)} captions")
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        tokens = self.tokenizer(captions).to(self.device)
        image_embeds = self.model.encode_image(pixels).double()
        text_embeds = self.model.encode_text(tokens).double()
        return torch.nn.functional.cosine_similarity(image_embeds, text_embeds, dim=-1).cpu()


def _is_torchscript(path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())
