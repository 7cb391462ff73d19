"""The PyTriton embedding server end to end: a tiny model trains with `online_encoding: server` and 2 dataloader
workers (server list: a dead address, then the live server), the embeddings it saw equal in-process MiniLM
embeddings of the same captions, and a dead server gives a clear error, not a hang and not zero embeddings.

The server runs from its own environment (PyTriton pins numpy<2): NEMO_IMAGEN_PYTRITON_PYTHON, or the repository's
.venv-pytriton (which .ci/run builds)."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from nemo_imagen.data.demo import make_demo_dataset

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "scaleout" / "train_driver.py"
SERVER_PYTHON = Path(os.environ.get("NEMO_IMAGEN_PYTRITON_PYTHON", REPO / ".venv-pytriton" / "bin" / "python"))
TOKEN_LENGTH = 8

pytestmark = pytest.mark.skipif(
    not SERVER_PYTHON.exists(),
    reason=f"no PyTriton environment at {SERVER_PYTHON} (build it as .ci/run does, or set NEMO_IMAGEN_PYTRITON_PYTHON)",
)


def free_port_triple() -> int:
    """A port p with p, p + 1, p + 2 free (HTTP, gRPC, metrics)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 2 > 65535:
            continue
        try:
            sockets = []
            for offset in range(3):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no three consecutive free ports")


def wait_until_ready(server: subprocess.Popen, port: int, log: Path, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"embedding server exited ({server.returncode}):\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/text_encoder/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"embedding server not ready after {timeout_s} s:\n{log.read_text()[-4000:]}")


def train(out_dir: Path, shards: str, urls: str, check: bool = True) -> subprocess.CompletedProcess:
    overrides = [
        "model.unet.embed_dim=32", "model.unet.channel_mult=[1,2]", "model.unet.num_res_blocks=1",
        "model.unet.attention_resolutions=[32]", "model.unet.per_head_channels=16", "model.unet.cond_dim=32",
        "model.conditioning.embed_dim=384", f"model.conditioning.token_length={TOKEN_LENGTH}",
        "model.conditioning.online_encoding=server", f"++model.conditioning.server_urls=[{urls}]",
        "++model.conditioning.server_timeout_s=10", "++model.conditioning.server_retries=1",
        "model.conditioning.precached_key=null", "model.conditioning.encoder_path=null",
        f"model.data.train.dataset_path=['{shards}']", "model.data.num_workers=2",
        "model.data.webdataset.infinite_sampler=True", "model.data.webdataset.shuffle_buffer=4",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32", "trainer.max_steps=3",
        "trainer.enable_model_summary=False", "model.inductor=False", "model.sample_log.every_n_steps=0",
        "model.micro_batch_size=3", "model.global_batch_size=3", "exp_manager.create_checkpoint_callback=False",
        f"exp_manager.exp_dir={out_dir}/exp",
    ]
    result = subprocess.run(
        [sys.executable, str(DRIVER), str(out_dir), "base64-500m", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=400,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def served_training(tmp_path_factory):
    pytest.importorskip("tritonclient.http", reason="the trainer side needs tritonclient[http] (the test extra)")
    root = tmp_path_factory.mktemp("served")
    make_demo_dataset(str(root / "data"), num_samples=32, samples_per_shard=8, num_val_samples=0)
    shards = str(root / "data" / "train-{000000..000003}.tar")
    port = free_port_triple()
    log = root / "server.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [str(SERVER_PYTHON), str(REPO / "examples" / "embedding_server.py"), "--encoder", "all-MiniLM-L6-v2",
             "--token-length", str(TOKEN_LENGTH), "--http-port", str(port), "--max-batch-size", "16",
             "--device", "cpu"],
            cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:
        wait_until_ready(server, port, log)
        # the first address has no server: the worker that prefers it must fail over to the live one
        dead_port = free_port_triple()
        served = train(root / "run", shards, f"127.0.0.1:{dead_port},127.0.0.1:{port}")
    finally:
        server.send_signal(signal.SIGINT)  # PyTriton cleans its workspace on SIGINT, not on SIGTERM
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    started = time.monotonic()
    dead = train(root / "dead", shards, f"127.0.0.1:{port}", check=False)
    failover = f"embedding server 127.0.0.1:{dead_port} failed" in served.stdout + served.stderr
    return torch.load(root / "run" / "rank0.pt", weights_only=False), dead, time.monotonic() - started, failover


def test_model_saw_the_in_process_embeddings(served_training):
    from nemo_imagen.text.encoders import TextEncoder

    record, _, _, _ = served_training
    assert len(record["embeddings"]) == 3  # one per step, micro batch = global batch
    encoder = TextEncoder.from_path("all-MiniLM-L6-v2")
    for captions, embed, mask in record["embeddings"]:
        assert len(captions) == 3 and all(caption.strip() for caption in captions)
        expected_embed, expected_mask = encoder.encode(captions, TOKEN_LENGTH)
        assert torch.equal(mask, expected_mask)
        assert mask.sum(dim=1).min() >= 3  # [CLS], words, [SEP]: real tokens, not padding
        torch.testing.assert_close(embed, expected_embed, atol=1e-5, rtol=1e-5)
        assert embed[mask].abs().mean() > 0.05  # real token states, not zeros


def test_batches_came_from_both_dataloader_workers(served_training):
    record, _, _, _ = served_training
    shards = {key.rsplit("/", 1)[0] for _, keys in record["keys"] for key in keys}
    assert len(shards) >= 2  # 4 shards dealt to 2 workers, batches alternate between the workers


def test_dead_server_is_a_clear_error_not_a_hang(served_training):
    _, dead, seconds, _ = served_training
    assert dead.returncode != 0
    output = dead.stdout + dead.stderr
    assert "EmbeddingServerError" in output and "embedding servers did not answer" in output, output[-3000:]
    assert seconds < 300


def test_worker_failed_over_from_the_dead_address(served_training):
    _, _, _, failover = served_training
    assert failover  # worker 0 prefers the first address, logged its failure, and trained on the live server
