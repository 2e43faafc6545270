"""The one resumable download of the pipeline: Hub files (`sfd.hub`) and ADM's plain-URL evaluation
assets (`sfd.evaluation.assets`) both come through `fetch_url`.

The body is streamed by huggingface_hub's `http_get`, which takes any URL: the Hub's HTTP client,
proxy and certificate settings, and its retries of a connection dropped within one call. Bytes go
to a `.part` file that is kept when the process dies; the next call continues from the part's size
with an HTTP Range request (a server that ignores the Range restarts it from zero, one that answers
416 says there is nothing past it). The file appears under its final name, fsynced and renamed,
only once its size and sha256 check out: the target is either absent or complete.

Like every huggingface_hub request this obeys HF_HUB_OFFLINE, so the switch that keeps compute jobs
off the network covers the assets too; the fetch rules are local rules, run where it is unset.
Torch-free: the evaluator's side imports it.
"""

import importlib
import logging
from pathlib import Path

from sfd.errors import UserError, first_line
from sfd.io import replace_durably
from sfd.io import sha256 as sha256_of

log = logging.getLogger(__name__)


class DownloadError(UserError, RuntimeError):
    """A transfer that failed or whose file did not check out; the message says what to do."""


def transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures as raised by whichever HTTP client this huggingface_hub uses."""
    errors = [OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).TransportError)
        except ImportError:
            pass
    return tuple(errors)


def _continue(url: str, part: Path, dest: Path, headers: dict | None, expected_size: int | None, what: str):
    """Append the rest of `url` to `part`, asking for the bytes past its current size."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub.file_download import http_get

    with open(part, "ab") as f:
        resume = f.tell()
        if resume:
            log.info("%s: resuming at byte %d of %s", part, resume, expected_size or "unknown")
        try:
            http_get(
                url,
                f,
                resume_size=resume,
                headers=headers,
                expected_size=expected_size,
                displayed_filename=dest.name,
            )
        except hf_errors.OfflineModeIsEnabled as err:
            raise DownloadError(
                f"{what}: HF_HUB_OFFLINE is set, so nothing is downloaded; unset it, or download the file "
                f"elsewhere and put it at {dest}"
            ) from err
        except hf_errors.HfHubHTTPError as err:
            if err.response.status_code == 416 and resume:
                return  # nothing past the part: it is whole (its size and hash are checked next)
            raise DownloadError(
                f"{what}: HTTP {err.response.status_code} {err.response.reason_phrase}"
            ) from err
        except transport_errors() as err:  # refused, DNS, timeouts, dropped past the retries, short body
            raise DownloadError(
                f"{what}: download failed ({type(err).__name__}: {first_line(err)}); this machine "
                f"may be offline: rerun to resume from {part}, or download the file elsewhere and put it "
                f"at {dest}"
            ) from err


def fetch_url(
    url: str,
    dest,
    part,
    *,
    headers: dict | None = None,
    expected_size: int | None = None,
    sha256: str | None = None,
    what: str | None = None,
) -> str:
    """Download `url` to `dest` by way of the resumable `part`; returns the file's sha256.

    `headers` go to `url` as given: the caller decides whether credentials may. `what` names the
    file in messages (default: the URL; a signed CDN location is better left out). A part whose
    size differs from `expected_size` is kept for the next call; one whose hash differs from
    `sha256` is removed. An existing `dest` is the caller's business: this always transfers.
    """
    dest, part = Path(dest), Path(part)
    dest.parent.mkdir(parents=True, exist_ok=True)
    what = what or url
    _continue(url, part, dest, headers, expected_size, what)
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError(
            f"{what}: {part} has {size} bytes, the server says {expected_size}; rerun to resume"
        )
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise DownloadError(
            f"{what}: sha256 {digest} does not match the expected {sha256}; the download was removed"
        )
    replace_durably(part, dest)
    log.info("wrote %s (%d bytes)", dest, size)
    return digest
