"""Packaged models on the Hugging Face Hub.

A model argument (``Reporter.from_pretrained``, ``ctagrg report/serve/evaluate --model``) is a local folder or a Hub
id ``org/name``, optionally pinned to a revision (a branch, tag or commit) as ``org/name@revision``:

>>> parse_hub_id("ctagrg/ct-agrg-ctrate@v1.0")
HubId(repo_id='ctagrg/ct-agrg-ctrate', revision='v1.0')

A local folder always wins: ``org/name`` is the folder ``./org/name`` when that exists. A Hub id resolves to a
snapshot in the Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``),
downloaded by ``huggingface_hub.snapshot_download`` when it is not there yet. With ``HF_HUB_OFFLINE=1`` only the
cache is looked at. ``push_model`` uploads a packaged folder (``ctagrg push``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# owner and name: letters, digits, '-', '_', '.'; the revision: anything up to whitespace (a branch may hold '/')
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^\s@]+))?")
# the files of a packaged model (reporter.MODEL_PARTS) and its card; nothing else in a repository is downloaded
MODEL_FILES = ("visual/*", "decoder/*", "tokenizer/*", "thresholds.json", "preprocess.json", "reporter.json",
               "README.md")


@dataclass(frozen=True)
class HubId:
    repo_id: str  # "org/name"
    revision: str | None = None  # branch, tag or commit; None: the default branch

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_hub_id(text: str) -> HubId | None:
    """``org/name`` or ``org/name@revision`` as a HubId; None for anything else (``model``, ``./a/b``, ``/a/b``,
    ``a/b/c``, ``~/a``)."""
    match = _HUB_ID.fullmatch(text)
    return HubId(match["repo"], match["revision"]) if match else None


def hub_cache_dir() -> Path:
    """The Hub cache folder as the environment names it now. huggingface_hub reads ``HF_HOME``/``HF_HUB_CACHE``
    once, when it is imported; reading them here lets a program (or a test) set them later."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(os.path.expandvars(str(home))).expanduser() / "hub"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to 1/true/yes/on, read now (see ``hub_cache_dir``)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def hub_id_of_cache_path(path: str | Path) -> str | None:
    """``org/name`` when ``path`` lies in a Hub cache snapshot (``.../models--org--name/snapshots/<commit>/...``),
    else None: how a GPT-2 loaded from the cache is named as the card's ``base_model``."""
    for part in Path(path).parts:
        if part.startswith("models--") and part.count("--") >= 2:
            owner, _, name = part[len("models--") :].partition("--")
            return f"{owner}/{name}"
    return None


def resolve_model_dir(model: str | Path) -> Path:
    """The local folder that holds the packaged model ``model``: a folder (which always wins), else the Hub snapshot
    of the Hub id ``model`` (downloaded if need be). FileNotFoundError naming ``model`` and what was looked at when
    there is none."""
    from ctagrg.generation.reporter import check_model_dir

    hub = None if isinstance(model, Path) or Path(model).exists() else parse_hub_id(str(model))
    if hub is None:
        return check_model_dir(model)
    return download_model(hub)


def download_model(hub: HubId) -> Path:
    """The snapshot folder of ``hub`` in the Hub cache: the packaged model's files only (``MODEL_FILES``)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache, offline = hub_cache_dir(), hub_offline()
    try:
        folder = Path(snapshot_download(hub.repo_id, revision=hub.revision, cache_dir=str(cache),
                                        local_files_only=offline, allow_patterns=list(MODEL_FILES)))
    except HFValidationError as exc:
        raise FileNotFoundError(f"{hub}: no such model folder, nor a valid Hub id ({exc})") from None
    except LocalEntryNotFoundError as exc:
        why = ("and the Hub is not asked because HF_HUB_OFFLINE is set: unset it to download the model, or fill the "
               "cache on a machine that is online" if offline else
               f"and the Hugging Face Hub could not be reached ({_first_line(exc)})")
        where = ("only partly in the local Hugging Face cache" if type(exc).__name__ == "IncompleteSnapshotError"
                 else "not in the local Hugging Face cache")  # partly: an interrupted download
        raise FileNotFoundError(f"{hub}: no such model folder, and {where} ({cache}), {why}") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{hub}: the Hub repository {hub.repo_id} has no revision {hub.revision}") from None
    except RepositoryNotFoundError:  # also gated repositories
        raise FileNotFoundError(f"{hub}: no such model folder, and no model {hub.repo_id} on the Hugging Face Hub "
                                f"that this machine may read (private or gated: log in with `hf auth login` or set "
                                f"HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise OSError(f"{hub}: the Hugging Face Hub refused the download ({_first_line(exc)})") from None
    check_packaged_model(folder, f"{hub} ({folder})")
    logger.info("%s: Hub snapshot %s", hub, folder)
    return folder


def push_model(directory: str | Path, repo: str, *, private: bool = False, message: str | None = None,
               api: Any = None) -> str:
    """Upload the packaged model in ``directory`` to the Hub repository ``repo`` (``org/name``, or
    ``org/name@branch`` to commit to that branch, which is made if need be). The repository is created when
    missing (``private``: a private one). Only the model's files (``MODEL_FILES``) are uploaded; a reports file or
    other files beside them stay behind. Returns the commit's URL. ``api``: an ``huggingface_hub.HfApi`` (default:
    one with the token of ``hf auth login`` or ``HF_TOKEN``)."""
    hub = parse_hub_id(repo)
    if hub is None:
        raise ValueError(f"{repo}: expected a Hub id org/name or org/name@branch")
    directory = check_packaged_model(directory)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(hub.repo_id, repo_type="model", private=private, exist_ok=True)
    if hub.revision:
        api.create_branch(hub.repo_id, branch=hub.revision, repo_type="model", exist_ok=True)
    commit = api.upload_folder(repo_id=hub.repo_id, folder_path=str(directory), repo_type="model",
                               revision=hub.revision, allow_patterns=list(MODEL_FILES),
                               commit_message=message or f"Upload ctagrg packaged model from {directory.name}")
    return str(getattr(commit, "commit_url", commit))


def add_evaluations(directory: str | Path, evaluations: list[str | Path], name: str | None = None) -> Path:
    """Record the results of ``ctagrg evaluate`` folders in the model card (README.md) of the packaged model in
    ``directory``: its Evaluation section and the Hub metadata's ``metrics``/``model-index``, replacing earlier ones.
    The card is outside the model's fingerprint, so the model stays the same model. ``name``: the model-index name
    (the Hub id). ValueError when an evaluation's predictions are of another model (their ``model`` fingerprint) or
    it has no protocol."""
    from ctagrg.config import read_json_object
    from ctagrg.generation.model_card import read_evaluation, with_evaluations
    from ctagrg.generation.reporter import model_fingerprint
    from ctagrg.utils.atomic import write_text_atomic

    directory = Path(directory)
    own = model_fingerprint(directory)
    results = []
    for folder in map(Path, evaluations):
        base = folder.parent if folder.is_file() else folder
        models = _prediction_models(base / "predictions.jsonl")
        if not models:
            raise ValueError(f"{base}: no predictions.jsonl with model fingerprints: cannot tell which model this "
                             f"evaluation scored")
        if models - {own}:
            raise ValueError(f"{base}: evaluates another model (fingerprint {', '.join(sorted(models - {own}))}; "
                             f"{directory} is {own}); its numbers do not belong on this model's card")
        results.append(read_evaluation(folder))
    card = directory / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    settings = read_json_object(directory / "reporter.json") if (directory / "reporter.json").is_file() else {}
    hub = {k: v for k, v in (settings.get("card") or {}).items() if k in ("license", "datasets", "base_model")}
    if name:
        hub["name"] = name
    write_text_atomic(card, with_evaluations(text, results, hub))
    return card


def _prediction_models(path: Path) -> set[str]:
    """The ``model`` fingerprints recorded in a predictions.jsonl (empty when there is none)."""
    import json

    if not path.is_file():
        return set()
    models = set()
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict):
            models.add(str(line.get("model")))
    return models


def check_packaged_model(folder: str | Path, label: str | None = None) -> Path:
    """``folder`` as a Path; FileNotFoundError naming ``label`` (default: the folder) when it is not a folder or
    lacks a part of a packaged model (``reporter.REQUIRED_PARTS``)."""
    from ctagrg.generation.reporter import REQUIRED_PARTS, check_model_dir

    folder = check_model_dir(folder)
    missing = [p for p in REQUIRED_PARTS if not (folder / p).exists()]
    if missing:
        raise FileNotFoundError(f"{label or folder}: not a packaged ctagrg model (missing {', '.join(missing)})")
    return folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
