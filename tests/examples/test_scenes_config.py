"""quickstart-scenes.yaml: what it trains on and samples, that its token_length holds every scene caption, and
that its ablation (`model.unet.attention_type=self`) reads the text only through the pooled embedding.
(Training it for two steps is tests/examples/test_every_config_trains.py.)"""
import dataclasses
import itertools

import pytest
import torch
from omegaconf import OmegaConf

from nemo_imagen.data.demo import _FRAMINGS, COLOURS, SHAPES, _with_article
from nemo_imagen.data.scene_checker import parse_scene_prompt
from nemo_imagen.data.scenes import RELATIONS
from nemo_imagen.modules.config import UNetConfig
from nemo_imagen.modules.factory import build_unet
from tests.tiny import REPO

CONFIG = OmegaConf.load(REPO / "examples" / "conf" / "quickstart-scenes.yaml")
LONGEST_CAPTION_TOKENS = 21  # measured below: MiniLM tokens, [CLS] and [SEP] included


def test_the_config_trains_on_precached_scenes_and_samples_scene_prompts():
    assert CONFIG.demo_data.kind == "scenes"
    assert CONFIG.model.data.train.dataset_path[0].startswith(CONFIG.demo_data.precache_dir + "/train-")
    assert CONFIG.model.conditioning.online_encoding is False and CONFIG.model.conditioning.precached_key
    assert CONFIG.model.unet.attention_type == "fused" and CONFIG.model.unet.image_size == 64
    assert CONFIG.model.data.train.augmentations.horizontal_flip is False  # the captions say left and right
    held_out = [parse_scene_prompt(prompt).held_out for prompt in CONFIG.model.sample_log.prompts]
    assert held_out == [False, False, False, True, True, True]
    assert CONFIG.model.conditioning.token_length >= LONGEST_CAPTION_TOKENS


def test_token_length_holds_the_longest_caption():
    """Every caption form of the data (each framing, object, relation and the background suffix; the one-shape
    captions are shorter): the longest is LONGEST_CAPTION_TOKENS MiniLM tokens."""
    from nemo_imagen.text.encoders import TextEncoder

    tokenizer = TextEncoder.from_path(CONFIG.model.conditioning.encoder_path).tokenizer
    objects = [_with_article(f"{colour} {shape}") for colour, shape in itertools.product(COLOURS, SHAPES)]
    captions = [
        f"{framing}{first} {relation} {second}{suffix}"
        for framing, first, relation, second, suffix in itertools.product(
            _FRAMINGS, objects, RELATIONS.values(), objects, ("", " on a plain light background")
        )
    ]
    single = "a simple illustration of a small orange triangle in the bottom right on a plain light background"
    lengths = [len(ids) for ids in tokenizer(captions + [single])["input_ids"]]
    assert max(lengths) == LONGEST_CAPTION_TOKENS
    assert lengths[-1] < LONGEST_CAPTION_TOKENS


@pytest.mark.parametrize("attention_type", ["self", "fused"])
def test_the_ablation_reads_text_only_through_the_pooled_embedding(attention_type):
    """With attention_type self the UNet's output does not change when the token states it attends to (the
    context) are replaced; with fused (the recipe) it does. The pooled embedding still carries the text in
    both: a contextual encoder's pooled vector can hold some of the word order, so the ablation removes the
    per-token, per-position reading of the text, not all of its content."""
    unet_cfg = dataclasses.replace(UNetConfig(**OmegaConf.to_container(CONFIG.model.unet)),
                                   attention_type=attention_type)
    torch.manual_seed(0)
    unet = build_unet("base", unet_cfg, CONFIG.model.conditioning.embed_dim).eval()
    with torch.no_grad():
        for parameter in unet.parameters():  # zero-initialised output layers would hide every path
            parameter.add_(0.05 * torch.randn_like(parameter))
        x, noise = torch.randn(2, 3, 64, 64), torch.rand(2)
        text = torch.randn(2, 8, CONFIG.model.conditioning.embed_dim)
        mask = torch.ones(2, 8, dtype=torch.bool)
        emb, context, mask = unet.condition(noise, text, mask)
        out = unet.trunk(x, emb, context, mask)
        other_context = unet.trunk(x, emb, torch.randn_like(context), mask)
        other_pooled = unet.trunk(x, unet.condition(noise, torch.randn_like(text), mask)[0], context, mask)
    assert not torch.allclose(out, other_pooled, atol=1e-4)  # the pooled text matters in both
    if attention_type == "self":
        assert torch.equal(out, other_context)
    else:
        assert not torch.allclose(out, other_context, atol=1e-4)
