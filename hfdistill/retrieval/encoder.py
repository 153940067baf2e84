"""A text encoder for dense retrieval (transformers + torch), following an `EncoderSpec`: prefixes,
truncation, the model, masked mean (or CLS / pooler) pooling, L2 normalisation.

The steps are Search-R1's (`retrieval_server.py` `Encoder.encode`, `index_builder.py` `encode_all`), so
vectors match those of its published index; pooling is done in float32 (Search-R1 pools in the model's
dtype, which differs only in the last bits under fp16). Half precision on a GPU, float32 on CPU.
Texts are encoded in batches of similar length, so little compute goes to padding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from hfdistill.core.encoders import EncoderSpec
from hfdistill.core.errors import ConfigError, first_line

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
        return self._encode_sorted(texts, self.spec.passage_max_length, batch_size, progress).cpu().numpy()

    def _encode_sorted(self, texts: list[str], max_length: int, batch: int,
                       progress: Callable[[int], object] | None = None) -> torch.Tensor:
        """Encode in batches of similar lengths (longest first), so little compute goes to padding; the
        vectors come back in input order. Results stay on the device until the caller copies them, so the
        CPU tokenizes the next batch while a GPU runs this one."""
        if not texts:
            return torch.empty((0, self.dim), device=self.device)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        parts = []
        for start in range(0, len(order), batch):
            parts.append(self._forward([texts[i] for i in order[start:start + batch]], max_length))
            if progress is not None:
                progress(min(batch, len(order) - start))
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(parts).index_select(0, inverse.to(self.device))

    def _forward(self, texts: list[str], max_length: int) -> torch.Tensor:
        inputs = self.tokenizer(texts, max_length=max_length, padding=True, truncation=True, return_tensors="pt")
        if self.device.type == "cuda":
            # From pinned memory the copy is queued behind the running batch instead of waiting for it, so the
            # CPU goes on to tokenize the next one.
            inputs = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in inputs.items()}
        output = self.model(**inputs, return_dict=True)
        vectors = _pool(output, inputs["attention_mask"], self.spec.pooling)
        return torch.nn.functional.normalize(vectors, dim=-1) if self.spec.normalize else vectors


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
