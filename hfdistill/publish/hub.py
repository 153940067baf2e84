"""Pushing an output file to the Hugging Face Hub: the data with `Dataset.push_to_hub`, then the card.

The only module that writes to the Hub. The order matters: `push_to_hub` writes `configs`
and `dataset_info` into the repo's README, so the card is merged into the README it just committed
(read at that commit, written with it as parent), never built from scratch over it. Hub errors are
translated here into one-line `HubError`s that name the fix.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import datasets
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)

from hfdistill.core.errors import ConfigError, HfdistillError, HubError, first_line
from hfdistill.publish.card import HUB_ID, check_license, load_card_inputs
from hfdistill.publish.merge import MergedCard, merge_card
from hfdistill.run.record import GenerationRecord

__all__ = ["check_push_target", "push", "push_card"]

log = logging.getLogger(__name__)
_TOKEN_FIX = "log in with `hf auth login`, set HF_TOKEN, or pass --token with a write token"
_TRANSPORT_MODULES = {"httpx", "httpx2", "requests", "urllib3", "aiohttp", "http"}


def push(path: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
         license: str | None = None, overwrite_card: bool = False) -> str:
    """Push an output parquet and its card to the dataset repo `repo_id`; return the repo's URL.

    `private` applies when the repo is created; `token=None` lets huggingface_hub find one (HF_TOKEN,
    then the login). An existing hand-written card body is kept unless `overwrite_card`.
    """
    path = Path(path)
    check_push_target(repo_id, license=license, token=token)
    record, sample = load_card_inputs(path)  # fails on a foreign file before anything is uploaded
    with _hub_errors(repo_id):
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        commit = ds.push_to_hub(repo_id, private=private, token=token,
                                commit_message=f"Upload {ds.num_rows} rows distilled with hfdistill")
        merged = push_card(repo_id, record, sample, token=token, license=license, overwrite_card=overwrite_card,
                           revision=commit.oid)
    _report(merged, repo_id)
    return str(commit.repo_url)


def check_push_target(repo_id: str, *, license: str | None = None, token: str | None = None) -> None:
    """What can be checked without the network: the repo id, the license and that a token exists.

    `generate --push-to-hub` calls it before any teacher call, so a typo does not wait for hours.
    """
    _check_repo_id(repo_id)
    check_license(license)
    if token is None and get_token() is None:  # a usage problem (exit 2), found before any upload or rollout
        raise ConfigError(f"no Hugging Face token found; {_TOKEN_FIX}")


def push_card(repo_id: str, record: GenerationRecord, sample: dict | None, *, token: str | None = None,
              license: str | None = None, overwrite_card: bool = False, revision: str | None = None) -> MergedCard:
    """Merge our card into the repo's README at `revision` and commit it on top of that revision."""
    api = HfApi(token=token)
    existing = _read_readme(repo_id, revision, token)
    merged = merge_card(existing, record, sample, repo_id=repo_id, license=license, overwrite=overwrite_card)
    if merged.text != existing:
        api.create_commit(repo_id, [CommitOperationAdd("README.md", merged.text.encode())], repo_type="dataset",
                          commit_message="Update the dataset card (hfdistill)", parent_commit=revision)
    return merged


def _read_readme(repo_id: str, revision: str | None, token: str | None) -> str | None:
    try:
        local = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision, token=token)
    except EntryNotFoundError:
        return None
    return Path(local).read_text(encoding="utf-8-sig")


def _check_repo_id(repo_id: str) -> None:
    if not HUB_ID.fullmatch(repo_id or "") or ".." in repo_id:
        raise ConfigError(f"the Hub repo id (--repo-id / --push-to-hub) must look like USER/NAME or ORG/NAME, "
                          f"got {repo_id!r}")


def _report(merged: MergedCard, repo_id: str) -> None:
    if merged.body == "kept":
        log.info("kept the hand-written text of %s's README (metadata merged); pass --overwrite-card to replace "
                 "it with the generated card, or put the hfdistill:card begin/end markers where the generated "
                 "section should go", repo_id)


# ---------------------------------------------------------------- errors


@contextlib.contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """Translate the Hub's exceptions (possibly wrapped by datasets) into one-line HubErrors."""
    try:
        yield
    except HfdistillError:
        raise
    except Exception as e:  # classified below; anything unrecognised is re-raised as is
        translated = _translate(e, repo_id)
        if translated is None:
            raise
        raise translated from None


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _translate(e: BaseException, repo_id: str) -> HfdistillError | None:
    for err in _chain(e):
        if isinstance(err, LocalTokenNotFoundError):
            return HubError(f"no Hugging Face token found; {_TOKEN_FIX}")
        if isinstance(err, OfflineModeIsEnabled):
            return HubError("HF_HUB_OFFLINE is set; unset it to push to the Hub")
        if isinstance(err, HFValidationError):
            return ConfigError(f"--repo-id {repo_id!r} is not a valid repo id: {first_line(err)}")
        if isinstance(err, HfHubHTTPError) and err.response is not None:
            return _http_error(err, repo_id)
        if isinstance(err, ValueError) and str(err).startswith("Invalid metadata in README.md"):
            return HubError(f"the Hub rejected the card's metadata: {' '.join(str(err).split())}; "
                            "fix the YAML block of the repo's README.md")
        if _is_transport_error(err):
            return HubError(f"cannot reach the Hub at {constants.ENDPOINT} ({first_line(err)}); "
                            "check your network connection and HF_ENDPOINT, then push again")
    return None


def _http_error(err: HfHubHTTPError, repo_id: str) -> HubError:
    status = err.response.status_code
    said = err.server_message or first_line(err)
    if status == 401 and not isinstance(err, RepositoryNotFoundError):
        return HubError(f"the Hub refused the token (401 Unauthorized: {said}); {_TOKEN_FIX}")
    if status == 403:
        return HubError(f"the token may not write to {repo_id} (403 Forbidden); use a token with write access "
                        "to that namespace (see https://huggingface.co/settings/tokens)")
    if isinstance(err, RepositoryNotFoundError) or status == 404:
        return HubError(f"dataset repo {repo_id} was not found and could not be created ({status}); check the "
                        f"namespace exists and your token may write to it; {_TOKEN_FIX}")
    if status in (409, 412):
        return HubError(f"{repo_id} changed while pushing ({status}: someone else committed); push again")
    if status == 429:
        return HubError("the Hub is rate-limiting this token (429 Too Many Requests); wait a few minutes, push again")
    if status >= 500:
        return HubError(f"the Hub failed ({status}: {said}); try again later")
    return HubError(f"the Hub answered {status}: {said}")


def _is_transport_error(err: BaseException) -> bool:
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    module = type(err).__module__.split(".")[0]
    return module in _TRANSPORT_MODULES and not hasattr(err, "response")
