"""Shared fixtures: the real all-MiniLM-L6-v2 encoder (loaded once, with the network blocked) and a
tiny random-weight T5 checkpoint with a sentencepiece tokenizer trained here."""
import contextlib
import io
import itertools
import socket
from unittest import mock

import pytest
import torch
import transformers

from nemo_imagen.text import MINILM_NAME, TextEncoder


@contextlib.contextmanager
def network_blocked():
    """Any attempt to resolve a host name or open a connection raises."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    with mock.patch.object(socket.socket, "connect", refuse), mock.patch.object(socket, "getaddrinfo", refuse):
        yield


@pytest.fixture(scope="session")
def minilm() -> TextEncoder:
    with network_blocked():
        return TextEncoder.from_path(MINILM_NAME, batch_size=4)


def _caption_corpus():
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    shapes = ["circle", "square", "triangle", "star", "hexagon"]
    places = ["on a white background", "in the corner", "next to a tree", "under the sky", "on the table"]
    sizes = ["small", "large"]
    return [f"a {size} {colour} {shape} {place}" for colour, shape, place, size in itertools.product(colours, shapes, places, sizes)]


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A saved T5ForConditionalGeneration (d_model 32) with a T5-style sentencepiece tokenizer.

    Returns:
        (directory, the in-memory model that was saved there)
    """
    import sentencepiece

    directory = tmp_path_factory.mktemp("tiny_t5")
    model_bytes = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_caption_corpus()),  # 400 captions
        model_writer=model_bytes,
        vocab_size=64,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,  # T5's ids: pad 0, eos 1, unk 2, no bos
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    spm_path = directory / "trained.model"
    spm_path.write_bytes(model_bytes.getvalue())
    tokenizer = transformers.T5Tokenizer(vocab_file=str(spm_path), extra_ids=0, legacy=True)
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=4,
        decoder_start_token_id=0,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    spm_path.unlink()
    return directory, model
