"""Hugging Face Hub repo ids wherever a checkpoint path is accepted.

``resolve("Journey9ni/vlm-3r-llava-qwen2-lora")`` returns the local snapshot folder of that repo,
downloading only the files a loader reads (``allow_patterns``) into the standard Hub cache
(``HF_HUB_CACHE`` or ``HF_HOME/hub``). ``org/name@revision`` pins a branch, tag or commit. An
existing local path always wins and is returned unchanged, so nothing changes for local folders.

The environment is read at call time, not at import (``huggingface_hub.constants`` freezes it when
first imported): ``HF_ENDPOINT`` (a mirror, or a test server), ``HF_HUB_CACHE`` / ``HF_HOME`` and
``HF_HUB_OFFLINE=1`` (cache only, no request leaves the machine).

Every failure is a :class:`HubError`, a ``FileNotFoundError`` with a one-line message, so the
command-line tools print one ``error:`` line for it (launch/cli.py).
"""

from __future__ import annotations

import fnmatch
import os
import re

# What each loader reads. Torch-pickled full weights (pytorch_model*.bin) are never fetched: every
# loader here reads the safetensors copy, and the pickles double the download.
QWEN2_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja"]
SIGLIP_FILES = ["*.json", "*.safetensors"]
CONFIG_FILES = ["config.json"]
CUT3R_FILES = ["*.json", "*.safetensors"]
# ours (vlm3r_config.json + model.safetensors + tokenizer), a merged LLaVA-Video dir, or a released
# LoRA dir (adapter + non_lora_trainables.bin), plus a CUT3R .pth an export put beside it
VLM3R_FILES = [*QWEN2_FILES, "adapter_model.bin", "non_lora_trainables.bin", "*.pth"]

# the Hub's own id rule: two names of letters, digits, '-', '_', '.'; no '--' or '..'
_REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96})(?:@(?P<rev>[\w./-]+))?$")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".json")
CUT3R_SOURCE = (
    "CUT3R's released checkpoint is not on the Hugging Face Hub: download cut3r_512_dpt_4_64.pth from the "
    "CUT3R README (github.com/CUT3R/CUT3R, Google Drive id 1Asz-ZB3FfpzZYwunhQvNPZEUA8XUNAYD) and pass its "
    "local path"
)


class HubError(FileNotFoundError):
    """A checkpoint that is neither a local path nor fetchable from the Hub (one-line message)."""


def parse_repo_id(name: str) -> tuple[str, str | None] | None:
    """``"org/name[@revision]"`` -> ``(repo_id, revision or None)``; None for anything that cannot
    be a Hub model id (absolute or ``./`` paths, deeper paths, checkpoint file names)."""
    m = _REPO_ID.match(name)
    if m is None or name.startswith((".", "~")) or "--" in m["repo"] or ".." in m["repo"]:
        return None
    if m["repo"].lower().endswith(_CHECKPOINT_SUFFIXES):
        return None
    return m["repo"], m["rev"]


def _offline() -> bool:
    return (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper() in (
        "1", "ON", "YES", "TRUE")


def cache_dir() -> str:
    """The standard Hub cache folder, as ``huggingface_hub`` computes it (read now)."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                              or os.path.join(home, "hub"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _has_match(folder: str, patterns: list[str] | None) -> bool:
    for root, _, files in os.walk(folder):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
            if patterns is None or any(fnmatch.fnmatch(rel, p) for p in patterns):
                return True
    return False


def resolve(path_or_repo_id: str | None, allow_patterns: list[str] | None = None, *,
            what: str = "checkpoint") -> str | None:
    """A local path for ``path_or_repo_id``: an existing local path as given; a Hub model id
    (``org/name`` or ``org/name@revision``) as its snapshot folder in the Hub cache, with the files
    matching ``allow_patterns`` downloaded (or taken from the cache when offline). A name that is
    neither is returned unchanged, so the loader reports its usual "does not exist" error.
    ``what`` names the argument in error messages ("base model", "SigLIP config", ...)."""
    if not path_or_repo_id or os.path.exists(os.path.expanduser(path_or_repo_id)):
        return path_or_repo_id
    name = path_or_repo_id
    if name.lower().endswith((".pth", ".pt")):
        why = CUT3R_SOURCE if "cut3r" in os.path.basename(name).lower() else (
            "torch checkpoints are read from local files only, never fetched from the Hub")
        raise HubError(f"{what} {name} is not a local file: {why}")
    parsed = parse_repo_id(name)
    if parsed is None:
        return name
    repo, rev = parsed
    return _download(repo, rev, allow_patterns, what)


def _download(repo: str, rev: str | None, allow_patterns: list[str] | None, what: str) -> str:
    from httpx2 import HTTPError as TransportError  # huggingface_hub 2's HTTP client
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    cache, offline = cache_dir(), _offline()
    label = f"{repo}@{rev}" if rev else repo
    try:
        folder = snapshot_download(repo, revision=rev, allow_patterns=allow_patterns, cache_dir=cache,
                                   endpoint=endpoint, local_files_only=offline)
    except GatedRepoError as e:
        raise HubError(f"{what} {label} is gated on the Hub: accept its licence on {endpoint}/{repo} and log in "
                       "(`hf auth login`) or set HF_TOKEN") from e
    except RepositoryNotFoundError as e:
        raise HubError(f"{what} {label} is neither a local path nor a model on the Hub ({endpoint}): check the "
                       "spelling (org/name[@revision]); for a private repo log in (`hf auth login`)") from e
    except RevisionNotFoundError as e:
        raise HubError(f"{what} {label}: revision {rev!r} does not exist on the Hub ({endpoint}/{repo}); use a "
                       "branch, tag or commit of that repo") from e
    except IncompleteSnapshotError as e:
        raise HubError(f"{what} {label}: its copy in the Hugging Face cache ({cache}) is incomplete and the Hub "
                       f"({endpoint}) cannot be reached: rerun with network access to finish the download") from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if offline:
            raise HubError(f"{what} {label} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: "
                           f"download it once with network access (`hf download {repo}`) or pass a local "
                           "path") from e
        raise HubError(f"{what} {label}: cannot reach the Hub ({endpoint}) and it is not in the Hugging Face cache "
                       f"({cache}): check the network, or fill the cache elsewhere and set HF_HUB_OFFLINE=1") from e
    except HfHubHTTPError as e:
        raise HubError(f"{what} {label}: the Hub ({endpoint}) refused the download: {_first_line(e)}") from e
    except (OSError, ValueError, TransportError) as e:  # a broken transfer, a full disk, a rejected id
        raise HubError(f"{what} {label}: download failed: {_first_line(e)}") from e
    if not _has_match(folder, allow_patterns):
        raise HubError(f"{what} {label} has no files matching {allow_patterns} (snapshot {folder}): is it the "
                       "right repo?")
    return folder


def resolve_vlm3r(path: str | None, base: str | None = None,
                  geometry: str | None = None) -> tuple[str | None, str | None, str | None]:
    """:func:`resolve` for the three checkpoints of a VLM-3R: the model (ours, merged or a released
    LoRA dir), its LLaVA-Video-Qwen2 ``base`` and the CUT3R ``geometry``."""
    return (resolve(path, VLM3R_FILES, what="model"), resolve(base, QWEN2_FILES, what="base model"),
            resolve(geometry, CUT3R_FILES, what="CUT3R checkpoint"))
