"""Finding and downloading a DiffusionGemma GGUF on the Hugging Face Hub (HF cache, progress bars and
HF_HUB_OFFLINE as huggingface_hub handles them)."""
from __future__ import annotations

import re


class HubError(ValueError):
    """No usable GGUF in the repository; the message lists what is there."""


_SHARD = re.compile(r"-\d{5}-of-\d{5}\.gguf$")


def _hub():
    try:
        import huggingface_hub
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("Model.from_pretrained needs huggingface_hub: pip install huggingface_hub") from e
    return huggingface_hub


def list_gguf_files(repo_id: str) -> list[str]:
    hub = _hub()
    try:
        files = hub.list_repo_files(repo_id)
    except Exception as e:  # offline, or the repo does not exist: fall back to the local cache
        files = _cached_files(repo_id)
        if not files:
            raise HubError(f"{repo_id}: cannot list the repository ({type(e).__name__}: {e}) and nothing of it is "
                           "in the local Hugging Face cache; check the name and your connection") from e
    return sorted(f for f in files if f.endswith(".gguf") and "mmproj" not in f.lower())


def _cached_files(repo_id: str, cache_dir: str | None = None) -> list[str]:
    hub = _hub()
    try:
        info = hub.scan_cache_dir(cache_dir)
    except Exception:
        return []
    for repo in info.repos:
        if repo.repo_id == repo_id:
            return sorted({f.file_path.relative_to(rev.snapshot_path).as_posix()
                           for rev in repo.revisions for f in rev.files})
    return []


def pick_file(files: list[str], quant: str | None, repo_id: str) -> str:
    if not files:
        raise HubError(f"{repo_id}: the repository has no .gguf files")
    if quant is None:
        if len(files) == 1:
            return files[0]
        raise HubError(f"{repo_id}: several GGUF files; choose one with quant= or filename=: {', '.join(files)}")
    q = quant.lower()
    matches = [f for f in files if re.search(rf"(^|[-_.]){re.escape(q)}([-_.]|$)", f.lower().rsplit("/", 1)[-1])]
    if not matches:
        raise HubError(f"{repo_id}: no GGUF file matches quant {quant!r}; available: {', '.join(files)}")
    if any(_SHARD.search(f) for f in matches):
        raise HubError(f"{repo_id}: the {quant} file is split into shards ({', '.join(matches)}), which this "
                       "runtime does not load yet; merge them with llama.cpp's gguf-split --merge")
    if len(matches) > 1:
        raise HubError(f"{repo_id}: quant {quant!r} matches several files; pass filename=: {', '.join(matches)}")
    return matches[0]


def download_gguf(repo_id: str, *, quant: str | None = "Q4_K_M", filename: str | None = None) -> str:
    """Local path of the chosen GGUF, downloading it into the HF cache if needed."""
    hub = _hub()
    if filename is None:
        filename = pick_file(list_gguf_files(repo_id), quant, repo_id)
    try:
        return hub.hf_hub_download(repo_id, filename)
    except Exception as e:
        raise HubError(f"{repo_id}: cannot download {filename} ({type(e).__name__}: {e})") from e
