"""`online_encoding: server` config checks, and the client's bounded failure without any server."""
import socket
import time

import pytest

from nemo_imagen.text.config import ConditioningConfig
from nemo_imagen.text.embedding_client import EmbeddingClient, EmbeddingServerError, build_embedding_client


def test_true_false_and_server_are_accepted():
    assert ConditioningConfig(online_encoding=True, encoder_path="minilm").online_encoding is True
    assert ConditioningConfig(online_encoding=False).online_encoding is False
    server = ConditioningConfig(online_encoding="server", server_urls=["127.0.0.1:8000"], precached_key=None)
    assert server.encoder_path is None  # the server holds the encoder
    client = build_embedding_client(server)
    assert client.urls == ["127.0.0.1:8000"] and (client.token_length, client.embed_dim) == (128, 1024)
    assert build_embedding_client(ConditioningConfig()) is None


@pytest.mark.parametrize("changes,message", [
    ({"online_encoding": "yes"}, r"^conditioning\.online_encoding: 'yes' is not one of True, False, 'server'"),
    ({"online_encoding": 1}, r"^conditioning\.online_encoding: 1 is not one of"),
    ({"online_encoding": "server"}, r"^conditioning\.server_urls: \[\] must list"),
    ({"online_encoding": "server", "server_urls": ["h:1"], "server_timeout_s": 0}, r"^conditioning\.server_timeout_s: 0"),
    ({"online_encoding": "server", "server_urls": ["h:1"], "server_retries": -1}, r"^conditioning\.server_retries: -1"),
])
def test_bad_server_settings_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        ConditioningConfig(**changes)


def test_no_server_is_a_clear_error_after_the_retries():
    pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (the test extra)")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = EmbeddingClient([f"127.0.0.1:{port}"], "text_encoder", 8, 384, timeout_s=5, retries=2)
    started = time.monotonic()
    with pytest.raises(EmbeddingServerError, match=r"did not answer 2 captions after 3 attempts") as error:
        client.encode(["a red circle", "a blue square"])
    assert f"127.0.0.1:{port}" in str(error.value)
    assert 3.0 <= time.monotonic() - started < 30  # slept 1 s + 2 s between the attempts, then gave up
