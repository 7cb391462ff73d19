"""The launch scripts: `bash -n`, and DRY_RUN=1 for 2 nodes x 8 GPUs plus embedding-server GPUs, checking the
printed commands' world size, ranks, devices, ports and batch sizes, and that their Hydra overrides make a valid
config (composed and validated like examples/train.py does, with the gradient accumulation build_trainer derives)."""
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nemo_imagen.models.config import validate_model_config
from nemo_imagen.models.megatron_base import gradient_accumulation_steps, trainer_data_parallel_size

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "examples" / "scripts"


def dry_run(script, *args, **env):
    result = subprocess.run(
        ["bash", str(SCRIPTS / script), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "DRY_RUN": "1", **env},
    )
    return result


def commands(output):
    """The printed commands as argument lists (lines starting with '+ ')."""
    return [shlex.split(line[2:].removesuffix(" &")) for line in output.splitlines() if line.startswith("+ ")]


def options(argv):
    """--key=value options and key=value Hydra overrides of a command line."""
    found = {}
    for arg in argv:
        match = re.fullmatch(r"(?:--|\+\+)?([\w.\-]+)=(.*)", arg)
        if match:
            found.setdefault(match.group(1), match.group(2))
    return found


def check_overrides_compose(argv, world_size):
    """The train.py arguments make a valid model config whose global batch fits the world size."""
    start = argv.index("--config-name")
    overrides = argv[start + 2 :]
    with initialize_config_dir(config_dir=str(REPO / "examples" / "conf"), version_base=None):
        cfg = compose(config_name=argv[start + 1], overrides=overrides)
    typed, _ = validate_model_config(cfg.model)
    assert trainer_data_parallel_size(cfg.trainer) == world_size
    return typed, gradient_accumulation_steps(typed.micro_batch_size, typed.global_batch_size, world_size)


@pytest.mark.parametrize("script", sorted(path.name for path in SCRIPTS.iterdir()))
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True).returncode == 0


def test_singlenode_with_two_embedding_gpus():
    result = dry_run("singlenode_train.sh", "base64-500m", "bf16-mixed", 8, 32, "runs/b", 2, "trainer.max_steps=10",
                     ENCODER_PATH="/ckpt/t5-v1_1-xxl", GLOBAL_BATCH_SIZE="512")
    assert result.returncode == 0, result.stderr
    servers, train = commands(result.stdout)[:2], commands(result.stdout)[2]
    for index, server in enumerate(servers):
        assert server[1] == f"CUDA_VISIBLE_DEVICES={8 + index}"  # dedicated GPUs after the 8 training GPUs
        assert server[server.index("--http-port") + 1] == str(8000 + 3 * index)
        assert server[server.index("--encoder") + 1] == "/ckpt/t5-v1_1-xxl"
    assert train[1] == "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" and train[2] == "torchrun"
    found = options(train)
    assert found["nproc-per-node"] == "8" and found["nnodes"] == "1"
    assert found["trainer.devices"] == "8" and found["model.micro_batch_size"] == "32"
    assert found["model.global_batch_size"] == "512"
    assert found["model.conditioning.server_urls"] == "[127.0.0.1:8000,127.0.0.1:8003]"
    typed, accumulation = check_overrides_compose(train, world_size=8)
    assert accumulation == 2  # 512 = 32 per GPU x 8 GPUs x 2 accumulation steps
    assert typed.conditioning.online_encoding == "server" and typed.conditioning.token_length == 128


def test_slurm_two_nodes_of_8_plus_a_server_node():
    result = dry_run("example_slurm_train.sub", "base64-500m", "bf16-mixed", 8, 32, "runs/b", 8,
                     ENCODER_PATH="/ckpt/t5", DRY_RUN_NODES="3")
    assert result.returncode == 0, result.stderr
    (server, train) = commands(result.stdout)
    assert server[0] == "srun" and options(server)["nodelist"] == "node003" and options(server)["ntasks"] == "8"
    assert server[-1] == "bfloat16" and "embedding_server.py" in " ".join(server)
    # what server task 3 of the node runs: GPU 3, port 8000 + 3 x 3
    wrapper = server[server.index("-c") + 1]
    task = {**os.environ, "SLURM_LOCALID": "3"}
    ran = subprocess.run(["bash", "-c", wrapper, "echo", "embedding_server.py"], capture_output=True, text=True, env=task)
    assert ran.stdout.split() == ["embedding_server.py", "--http-port", "8009"]
    ran = subprocess.run(["bash", "-c", wrapper, "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], capture_output=True, text=True, env=task)
    assert ran.stdout.strip() == "3"
    found = options(train)
    assert train[0] == "srun" and found["nodelist"] == "node001,node002"
    assert (found["nodes"], found["ntasks-per-node"], found["ntasks"]) == ("2", "8", "16")
    assert "MASTER_ADDR=node001" in found["export"]
    assert (found["trainer.num_nodes"], found["trainer.devices"]) == ("2", "8")
    assert (found["model.micro_batch_size"], found["model.global_batch_size"]) == ("32", "512")
    urls = found["model.conditioning.server_urls"].strip("[]").split(",")
    assert urls == [f"node003:{8000 + 3 * i}" for i in range(8)]
    assert "world size 16" in result.stdout
    assert "node 1 node002: SLURM_PROCID 8..15" in result.stdout
    _, accumulation = check_overrides_compose(train[train.index("python") :], world_size=16)
    assert accumulation == 1


@pytest.mark.parametrize("script,config", [("example_slurm_sr256.sub", "sr256-600m"), ("example_slurm_sr1024.sub", "sr1024-400m")])
def test_sr_scripts_pass_their_config_name(script, config):
    result = dry_run(script, "bf16-mixed", 8, 16, "runs/sr", 0, DRY_RUN_NODES="2")
    assert result.returncode == 0, result.stderr
    (train,) = commands(result.stdout)
    found = options(train)
    assert train[train.index("--config-name") + 1] == config
    assert (found["ntasks"], found["model.global_batch_size"]) == ("16", "256")
    assert "model.conditioning.online_encoding" not in found  # no servers: the config's own conditioning
    renamed = dry_run(script, "bf16-mixed", 8, 16, "runs/sr", 0, DRY_RUN_NODES="2", CONFIG_NAME="my-sr")
    assert commands(renamed.stdout)[0][train.index("--config-name") + 1] == "my-sr"


@pytest.mark.parametrize("args,env,message", [
    (("base64-500m", "bf16-mixed", 8, 32, "runs/b", 4), {"ENCODER_PATH": "t5"}, "EMBED_GPUS: 4 is not a multiple of GPUS_PER_NODE 8"),
    (("base64-500m", "bf16-mixed", 8, 32, "runs/b", 8), {}, "ENCODER_PATH: set it"),
    (("base64-500m", "bf16-mixed", 8, 32, "runs/b", 0), {"GLOBAL_BATCH_SIZE": "100"}, "GLOBAL_BATCH_SIZE: 100 is not a positive multiple"),
    (("base64-500m", "bf16-mixed", "eight", 32, "runs/b", 0), {}, "GPUS_PER_NODE: 'eight'"),
])
def test_bad_arguments_are_named(args, env, message):
    result = dry_run("example_slurm_train.sub", *args, **env)
    assert result.returncode == 2 and message in result.stderr, result.stderr
