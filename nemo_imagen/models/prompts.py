"""Prompts for sampling: from the config's `prompts` list and a `prompts_file` (one prompt per line).

A prompts file may hold empty or blank lines (skipped), a UTF-8 byte-order mark (dropped), Windows line
ends, and bytes that are not UTF-8 (each replaced by U+FFFD, with a warning naming the lines). Prompts
longer than the text encoder's `token_length` are truncated by the tokenizer; `warn_long_prompts` names
each of them before sampling.
"""
import logging
from pathlib import Path
from typing import List, Sequence

from nemo_imagen.models.config import ConfigError

logger = logging.getLogger(__name__)


def read_prompts(cfg) -> List[str]:
    """`cfg.prompts` followed by the non-blank lines of `cfg.prompts_file` (if set), stripped.

    Raises:
        FileNotFoundError: `prompts_file` does not exist. ConfigError: no prompt at all.
    """
    prompts = [str(prompt).strip() for prompt in cfg.prompts if str(prompt).strip()]
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts_file: {str(path)!r} does not exist")
        prompts += read_prompts_file(path)
    if not prompts:
        raise ConfigError("prompts: give a list of prompts or a prompts_file with one prompt per line")
    return prompts


def read_prompts_file(path) -> List[str]:
    raw = Path(path).read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    prompts, bad_lines = [], []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode("utf-8", errors="replace")
            bad_lines.append(number)
        if text.strip():
            prompts.append(text.strip())
    if bad_lines:
        listed = ", ".join(map(str, bad_lines[:10])) + (" ..." if len(bad_lines) > 10 else "")
        logger.warning(
            "prompts_file %s: %d lines are not valid UTF-8 (lines %s); their undecodable bytes were replaced by U+FFFD",
            path, len(bad_lines), listed,
        )
    return prompts


def warn_long_prompts(prompts: Sequence[str], tokenizer, token_length: int) -> List[int]:
    """Warns about each prompt with more than `token_length` tokens (the encoder keeps only the first
    `token_length`); returns their indices."""
    lengths = [len(ids) for ids in tokenizer(list(prompts), truncation=False, verbose=False)["input_ids"]]
    long = [index for index, length in enumerate(lengths) if length > token_length]
    for index in long:
        logger.warning(
            "prompt %d has %d tokens, more than conditioning.token_length=%d; it is truncated to its first %d "
            "tokens: %.80r", index, lengths[index], token_length, token_length, prompts[index],
        )
    return long
