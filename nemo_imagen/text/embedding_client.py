"""Client of the text-embedding servers (``examples/embedding_server.py``, NVIDIA PyTriton over HTTP).

With ``conditioning.online_encoding: server`` each dataloader worker sends its batch's captions to a server and
puts the answer in the batch as ``{out_key}`` ``[B, L, D]`` and ``{out_key}_mask`` ``[B, L]``, like precached
embeddings. The server merges the requests of all workers of all ranks into large encoder batches (Triton's
dynamic batcher).

The connection is opened lazily in the process that uses it and reopened after a fork, so a client built in
the trainer and copied into dataloader workers never shares a socket between processes. A failed request (server
gone, refused, timed out, or an error reply) is retried ``retries`` times on the next server in the list (which
then stays the worker's server if it answers), then
``EmbeddingServerError`` names the servers and the last error: a worker never hangs and never returns made-up
(e.g. zero) embeddings.
"""
import logging
import os
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from nemo_imagen.text.config import SERVER

logger = logging.getLogger(__name__)

INPUT_NAME = "captions"
EMBEDDINGS_NAME = "embeddings"
MASK_NAME = "mask"


class EmbeddingServerError(RuntimeError):
    """The embedding servers did not answer (after the retries), or answered something unusable."""


def _import_http_client():
    try:
        import tritonclient.http as http_client
    except ImportError:
        raise EmbeddingServerError(
            "conditioning.online_encoding: 'server' needs the Triton HTTP client: pip install 'tritonclient[http]' "
            "(or the nemo_imagen[server] extra)"
        ) from None
    return http_client


class EmbeddingClient:
    """Encodes captions on remote embedding servers.

    Args:
        urls: ``host:port`` HTTP addresses of the servers (``conditioning.server_urls``).
        model_name: the served model's name (``conditioning.server_model_name``).
        token_length, embed_dim: what the config expects (L, D); a server answering other shapes is an error.
        timeout_s: connect and per-request network timeout.
        retries: further attempts after a failed request, each on the next server in the list.
    """

    def __init__(
        self,
        urls: Sequence[str],
        model_name: str,
        token_length: int,
        embed_dim: int,
        timeout_s: float = 60.0,
        retries: int = 2,
    ):
        if not urls:
            raise ValueError("conditioning.server_urls: no embedding server address given")
        self.urls = [url.removeprefix("http://") for url in urls]
        self.model_name = model_name
        self.token_length = token_length
        self.embed_dim = embed_dim
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self._preferred = 0
        self._connection = None  # (pid, url index, tritonclient InferenceServerClient, server's max batch size)

    def __getstate__(self):  # dataloader workers started by spawn get a copy without the connection
        return {**self.__dict__, "_connection": None}

    def prefer(self, index: int) -> None:
        """Send requests to server ``index % len(urls)`` first (spreads workers and ranks over the servers)."""
        self._preferred = index % len(self.urls)
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            pid, _, client, _ = self._connection
            self._connection = None
            if pid == os.getpid():
                try:
                    client.close()
                except Exception:  # closing a broken connection may raise anything; it is gone either way
                    pass

    def encode(self, captions: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """captions (B str) -> (embed ``[B, L, D]`` float32, mask ``[B, L]`` bool), from a server.

        Raises:
            EmbeddingServerError: no server answered within ``timeout_s`` after ``retries`` further attempts,
                or a server serves other shapes than ``token_length`` x ``embed_dim``.
        """
        captions = list(captions)
        errors: List[str] = []
        for attempt in range(self.retries + 1):
            index = (self._preferred + attempt) % len(self.urls)
            try:
                encoded = self._encode_on(index, captions)
            except EmbeddingServerError:
                raise
            except Exception as error:  # tritonclient, gevent, socket and timeout errors come in many types
                errors.append(f"{self.urls[index]}: {type(error).__name__}: {error}")
                logger.warning("embedding server %s failed (attempt %d of %d): %s", self.urls[index], attempt + 1,
                               self.retries + 1, errors[-1])
                self.close()
                if attempt < self.retries:
                    time.sleep(min(2.0**attempt, 10.0))
                continue
            self._preferred = index  # stay on the server that answered
            return encoded
        raise EmbeddingServerError(
            f"conditioning.server_urls: the embedding servers did not answer {len(captions)} captions after "
            f"{self.retries + 1} attempts (timeout {self.timeout_s:g} s each): " + "; ".join(errors)
        )

    def _connect(self, index: int):
        connection = self._connection
        if connection is not None and connection[0] == os.getpid() and connection[1] == index:
            return connection
        self.close()
        http_client = _import_http_client()
        url = self.urls[index]
        client = http_client.InferenceServerClient(
            url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
        )
        config = client.get_model_config(self.model_name)
        self._check_outputs(url, config)
        self._connection = (os.getpid(), index, client, max(1, int(config.get("max_batch_size") or 1)))
        return self._connection

    def _check_outputs(self, url: str, config: dict) -> None:
        dims = {output["name"]: [int(d) for d in output.get("dims", [])] for output in config.get("output", [])}
        expected = {EMBEDDINGS_NAME: [self.token_length, self.embed_dim], MASK_NAME: [self.token_length]}
        if any(dims.get(name) != shape for name, shape in expected.items()):
            raise EmbeddingServerError(
                f"conditioning.token_length / conditioning.embed_dim: the config expects embeddings "
                f"[{self.token_length}, {self.embed_dim}], but model {self.model_name!r} at {url} serves {dims}; "
                "start the server with the config's token length and encoder"
            )

    def _encode_on(self, index: int, captions: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        _, _, client, max_batch = self._connect(index)
        http_client = _import_http_client()
        embeds, masks = [], []
        for start in range(0, len(captions), max_batch):
            chunk = captions[start : start + max_batch]
            data = np.array([[caption.encode("utf-8")] for caption in chunk], dtype=np.object_)
            request = http_client.InferInput(INPUT_NAME, list(data.shape), "BYTES")
            request.set_data_from_numpy(data, binary_data=True)
            outputs = [http_client.InferRequestedOutput(name, binary_data=True) for name in (EMBEDDINGS_NAME, MASK_NAME)]
            result = client.infer(self.model_name, [request], outputs=outputs)
            embed, mask = result.as_numpy(EMBEDDINGS_NAME), result.as_numpy(MASK_NAME)
            if embed is None or mask is None or embed.shape != (len(chunk), self.token_length, self.embed_dim):
                raise EmbeddingServerError(
                    f"conditioning.server_urls: {self.urls[index]} answered {len(chunk)} captions with embeddings of "
                    f"shape {None if embed is None else embed.shape}, not {(len(chunk), self.token_length, self.embed_dim)}"
                )
            embeds.append(torch.from_numpy(np.array(embed, dtype=np.float32)))  # a writable copy
            masks.append(torch.from_numpy(np.array(mask, dtype=bool)))
        return torch.cat(embeds), torch.cat(masks)


def build_embedding_client(cond_cfg) -> Optional[EmbeddingClient]:
    """The client for ``conditioning.online_encoding: server``; None for any other mode."""
    if cond_cfg.online_encoding != SERVER:
        return None
    return EmbeddingClient(
        list(cond_cfg.server_urls),
        cond_cfg.server_model_name,
        cond_cfg.token_length,
        cond_cfg.embed_dim,
        timeout_s=cond_cfg.server_timeout_s,
        retries=cond_cfg.server_retries,
    )
