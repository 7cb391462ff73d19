"""Does a scenes checkpoint read the relation and the colour binding of its captions? A probe without sampling:

    python examples/scene_caption_probe.py RUN.nemo [--scenes 64] [--repeats 2]

For validation scenes of seen pairings (nemo_imagen/data/scenes.py), the checkpoint's denoising loss with the
scene's own caption is compared with its loss, on the same noisy image (same noise level and noise), with a false
caption that differs in one thing:
- `relation reversed`: "to the left of" <-> "to the right of", "above" <-> "below" (same objects, same word
  order), so only the side each object is on is wrong;
- `colours exchanged`: the two objects' colours swapped, so the same colours and shapes are named, bound wrongly.
Printed per noise level: the share of comparisons where the own caption has the lower loss (0.5 for a model that
does not tell the two captions apart; a tie counts half) and the mean relative loss gap (false - own) / own.
A model that draws the relation right should prefer its own caption at the noise levels where the layout is still
open (sigma of 1 and above for these 64x64 scenes)."""
import argparse
import dataclasses
import sys
from pathlib import Path

from nemo_imagen.models.pipeline import load_stage  # first: it sets the OpenMP spin before torch loads

import torch

from nemo_imagen.data.scenes import RELATIONS, SceneSample, render_scene, scene_caption, scene_sample
from nemo_imagen.data.transforms import to_tensor
from nemo_imagen.models.cli import exit_on_config_error, fail

SIGMAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _with_core(sample: SceneSample, objects, first_is_subject: bool) -> str:
    """The sample's caption (framing and suffix kept) with its core '<subject> <relation> <other>' rewritten."""
    core = scene_caption(sample.objects, sample.axis, sample.subject)
    subject, other = objects[sample.subject], objects[1 - sample.subject]
    false_core = f"{subject.phrase()} {RELATIONS[(sample.axis, first_is_subject)]} {other.phrase()}"
    return sample.caption.replace(core, false_core)


def relation_reversed(sample: SceneSample) -> str:
    """The caption with the other relation on the same axis: the subject named on the wrong side."""
    return _with_core(sample, sample.objects, sample.subject != 0)


def colours_exchanged(sample: SceneSample) -> str:
    """The caption with the two objects' colours swapped (shapes, places and relation kept)."""
    first, second = sample.objects
    swapped = (dataclasses.replace(first, colour=second.colour), dataclasses.replace(second, colour=first.colour))
    return _with_core(sample, swapped, sample.subject == 0)


FALSE_CAPTIONS = {"relation reversed": relation_reversed, "colours exchanged": colours_exchanged}


def preference(own_loss: torch.Tensor, false_loss: torch.Tensor):
    """(share of own < false, ties counting half; mean of (false - own) / own) over per-sample losses."""
    wins = (own_loss < false_loss).double() + 0.5 * (own_loss == false_loss).double()
    return wins.mean().item(), ((false_loss - own_loss) / own_loss).mean().item()


@exit_on_config_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--scenes", type=int, default=64, help="validation scenes of seen pairings")
    parser.add_argument("--repeats", type=int, default=2, help="noise draws per scene and noise level")
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.repeats < 1:
        fail("--scenes and --repeats must be at least 1")
    model = load_stage(str(args.checkpoint), torch.device("cpu"), key="checkpoint")  # a bad path: one line, exit 2
    unet = model.ema_unet if model.ema_unet is not None else model.unet
    samples = [scene_sample(0, "val", 2 * i) for i in range(args.scenes)]  # even indices: seen pairings
    images = torch.stack([to_tensor(render_scene(s)) for s in samples])
    generator = torch.Generator().manual_seed(0)
    print(f"{args.checkpoint}: {args.scenes} validation scenes (seen pairings) x {args.repeats} noise draws; "
          "share where the own caption has the lower loss, and the mean relative loss gap")
    print(f"{'sigma':>6s}" + "".join(f"  {name:>26s}" for name in FALSE_CAPTIONS))
    with torch.no_grad():
        own_text = model.encode_prompts([s.caption for s in samples])
        false_text = {name: model.encode_prompts([make(s) for s in samples]) for name, make in FALSE_CAPTIONS.items()}
        for sigma in SIGMAS:
            own, false = [], {name: [] for name in FALSE_CAPTIONS}
            for _ in range(args.repeats):
                draws = dict(
                    sigma=torch.full((len(samples),), sigma),
                    noise=torch.randn(images.shape, generator=generator),
                    drop_text=torch.zeros(len(samples), dtype=torch.bool),
                )
                own.append(model.precond.loss(unet, images, text_embed=own_text[0], text_mask=own_text[1], **draws))
                for name, (text, mask) in false_text.items():
                    false[name].append(model.precond.loss(unet, images, text_embed=text, text_mask=mask, **draws))
            own = torch.cat(own)
            cells = [preference(own, torch.cat(false[name])) for name in FALSE_CAPTIONS]
            print(f"{sigma:6.2f}" + "".join(f"  {share:14.3f} {gap:+11.2e}" for share, gap in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
