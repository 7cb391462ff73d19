"""FID-CLIP evaluation of generated images: captions, feature statistics, Frechet distance, CLIP score.

Plain PyTorch (no NeMo, Lightning or Hydra); examples/eval_fid_clip.py wires it to the sampling pipeline.
Optional dependencies (the `eval` extra: open_clip_torch, torchvision, torch-fidelity, timm, matplotlib) are
imported inside the functions that need them. A process that imports torchvision through them next to the
CPU torch wheel calls `torchvision_compat.ensure_torchvision_importable()` first.
"""
