"""A text encoder for dense retrieval (transformers + torch), following an `EncoderSpec`: prefixes,
truncation, the model, masked mean (or CLS / pooler) pooling, L2 normalisation.

The steps are Search-R1's (`retrieval_server.py` `Encoder.encode`, `index_builder.py` `encode_all`), so
vectors match those of its published index; pooling is done in float32 (Search-R1 pools in the model's
dtype, which differs only in the last bits under fp16). Half precision on a GPU, float32 on CPU.
Texts are encoded in batches of similar length, so little compute goes to padding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from hfdistill.core.encoders import EncoderSpec
from hfdistill.core.errors import ConfigError, first_line
from hfdistill.retrieval.tokenizing import TokenizerPool, TokenizerSettings, encode_arrays

__all__ = ["Encoder", "encoder_dim", "resolve_device"]

log = logging.getLogger(__name__)

QUERY_BATCH = 512  # queries per forward pass on a GPU; the batcher sends at most its max_batch anyway
CPU_QUERY_BATCH = 64  # on CPU, smaller batches of similar length waste less on padding (and cost no more)


def resolve_device(device: str) -> torch.device:
    """`auto`: the first GPU when one is visible, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no GPU is visible to torch; use --device cpu or auto")
    return torch.device(device)


def encoder_dim(name: str) -> int:
    """The width of the vectors `name` makes, read from its config only (no weights loaded)."""
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the encoder {name}: {first_line(e)}; pass a Hugging Face model id "
                          "or a local model directory") from None
    dim = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    if not isinstance(dim, int):
        raise ConfigError(f"the encoder {name} has no hidden_size in its config; is it a text encoder?")
    return dim


class Encoder:
    """Encodes queries and passages into L2-normalised vectors on one device."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, tokenizer: object, device: torch.device) -> None:
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self._tokenize: dict[int, _Tokenize] = {}  # by max_length
        # Passages are tokenized in this many worker processes while the GPU encodes (see `tokenizing`);
        # 0: in this process (on CPU the model itself keeps the cores busy).
        self.tokenizer_workers = min(8, max((os.cpu_count() or 1) - 2, 0)) if device.type == "cuda" else 0
        self._pool: TokenizerPool | None = None

    @classmethod
    def load(cls, spec: EncoderSpec, device: str = "auto") -> Encoder:
        """Load tokenizer and model; fp16 on a GPU (as Search-R1 serves), fp32 on CPU."""
        dev = resolve_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec.name, use_fast=True)
            model = AutoModel.from_pretrained(spec.name)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load the encoder {spec.name}: {first_line(e)}; pass a Hugging Face "
                              "model id or a local model directory") from None
        model = model.eval().to(dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)
        return cls(spec, model, tokenizer, dev)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode_queries(self, queries: Sequence[str]) -> torch.Tensor:
        """float32 vectors on this encoder's device, one row per query, in order."""
        batch = QUERY_BATCH if self.device.type == "cuda" else CPU_QUERY_BATCH
        return self._encode_sorted([self.spec.query_prefix + q for q in queries], self.spec.query_max_length, batch)

    @torch.inference_mode()
    def encode_passages(self, passages: Sequence[str], batch_size: int,
                        progress: Callable[[int], object] | None = None) -> np.ndarray:
        """float32 vectors, one row per passage, in order; `progress(n)` after each batch of n."""
        texts = [self.spec.passage_prefix + p for p in passages]
        pool = self._passage_pool()
        return self._encode_sorted(texts, self.spec.passage_max_length, batch_size, progress, pool).cpu().numpy()

    def close(self) -> None:
        """Stop the tokenizer's worker processes, if any were started."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _passage_pool(self) -> TokenizerPool | None:
        if self._pool is None and self.tokenizer_workers > 0:
            settings = TokenizerSettings.of(self.tokenizer, self.spec.passage_max_length)
            if settings is not None:
                self._pool = TokenizerPool(settings, self.tokenizer_workers)
        return self._pool

    def _encode_sorted(self, texts: list[str], max_length: int, batch: int,
                       progress: Callable[[int], object] | None = None,
                       pool: TokenizerPool | None = None) -> torch.Tensor:
        """Encode in batches of similar lengths (longest first), so little compute goes to padding; the
        vectors come back in input order. Results stay on the device until the caller copies them, so the
        CPU (or the `pool`'s processes) tokenizes the next batches while a GPU runs this one."""
        if not texts:
            return torch.empty((0, self.dim), device=self.device)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        batches = ([texts[i] for i in order[start:start + batch]] for start in range(0, len(order), batch))
        if pool is not None:
            inputs = ({k: torch.from_numpy(v) for k, v in arrays.items()} for arrays in pool.map(batches))
        else:
            tokenize = self._tokenizer(max_length)
            inputs = (tokenize(chunk) for chunk in batches)
        parts = []
        for tokens in inputs:
            parts.append(self._model(tokens))
            if progress is not None:
                progress(len(tokens["input_ids"]))
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(parts).index_select(0, inverse.to(self.device))

    def _tokenizer(self, max_length: int) -> _Tokenize:
        if max_length not in self._tokenize:
            self._tokenize[max_length] = _Tokenize(self.tokenizer, max_length)
        return self._tokenize[max_length]

    def _model(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.device.type == "cuda":
            # From pinned memory the copy is queued behind the running batch instead of waiting for it, so the
            # CPU goes on to tokenize the next one.
            inputs = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in inputs.items()}
        output = self.model(**inputs, return_dict=True)
        vectors = _pool(output, inputs["attention_mask"], self.spec.pooling)
        return torch.nn.functional.normalize(vectors, dim=-1) if self.spec.normalize else vectors


class _Tokenize:
    """`tokenizer(texts, max_length=n, padding=True, truncation=True, return_tensors="pt")`, the same ids, in
    this process: a fast tokenizer's own Rust copy, configured once, for the whole batch (the `transformers`
    wrapper configures it again on every call); a slow tokenizer is called as it is."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.settings = TokenizerSettings.of(tokenizer, max_length)
        self._fast = self.settings.build() if self.settings is not None else None

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self._fast is None or self.settings is None:
            return dict(self.tokenizer(texts, max_length=self.max_length, padding=True, truncation=True,
                                       return_tensors="pt"))
        return {k: torch.from_numpy(v) for k, v in encode_arrays(self._fast, texts, self.settings.type_ids).items()}


def _pool(output: object, mask: torch.Tensor, method: str) -> torch.Tensor:
    hidden = output.last_hidden_state.float()  # type: ignore[attr-defined]
    if method == "mean":
        hidden = hidden.masked_fill(~mask[..., None].bool(), 0.0)
        return hidden.sum(dim=1) / mask.sum(dim=1)[..., None]
    if method == "cls":
        return hidden[:, 0]
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise ConfigError("--pooling pooler: this model has no pooler output; use mean or cls")
    return pooled.float()
