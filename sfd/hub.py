"""Hugging Face Hub downloads for every part of the pipeline, plus `sfd fetch-weights`.

`download` resolves a file with the Hub's own metadata call (so private/gated repos, redirects
and error codes behave as in huggingface_hub), then streams it into a `.part` file next to the
target. The part file is named after the remote ETag and kept when the process dies, so the next
call resumes it with an HTTP Range request (huggingface_hub itself also retries dropped
connections within one call). The finished file is size- and, for LFS files, sha256-checked,
fsynced and renamed over the target: the target is either absent or complete.

The token comes from the environment (HF_TOKEN, else huggingface_hub's stored login) and is
never logged. HF_ENDPOINT is read at call time, so a mirror (or a test server) can be set late.
"""

import argparse
import importlib
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from sfd.errors import UserError
from sfd.io import replace_durably
from sfd.io import sha256 as sha256_of

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("{key}",)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class HubError(UserError, RuntimeError):
    """A file that could not be fetched from the Hub; the message says why and what to do."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures as raised by whichever HTTP client this huggingface_hub uses."""
    errors = [OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).TransportError)
        except ImportError:
            pass
    return tuple(errors)


def part_path(out_path: Path, etag: str) -> Path:
    """The resumable partial file for `out_path`; keyed by ETag so a changed remote file restarts."""
    return out_path.with_name(f".{out_path.name}.{re.sub(r'[^0-9A-Za-z]', '', etag)[:16]}.part")


def download(
    repo_id: str,
    filename: str,
    out_path,
    *,
    revision: str | None = None,
    repo_type: str = "model",
    sha256: str | None = None,
) -> Path:
    """Fetch `filename` of Hub repo `repo_id` at `revision` into `out_path`, atomically.

    An existing `out_path` is kept (checked against `sha256` when given). Raises HubError when
    offline, unauthorised (private or gated repo, bad token), or when the repo, revision or
    file does not exist.
    """
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    out_path = Path(out_path)
    where = f"{repo_type} repo {repo_id}@{revision or 'main'}, file {filename}"
    if out_path.is_file():
        if sha256 is not None and sha256_of(out_path) != sha256:
            raise HubError(
                f"{out_path}: exists but its sha256 is not {sha256} ({where}); delete it to refetch"
            )
        log.info("%s: already present", out_path)
        return out_path

    token = os.environ.get("HF_TOKEN") or None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
    log.info(
        "fetching %s -> %s (token: %s)", where, out_path, "HF_TOKEN" if token else "stored login or none"
    )
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
        if meta.etag is None:
            raise HubError(f"{where}: the server sent no ETag; is HF_ENDPOINT a Hugging Face Hub?")
        headers = build_hf_headers(token=token)
        if urlparse(meta.location).netloc != urlparse(url).netloc:
            headers.pop("authorization", None)  # signed CDN url: credentials stay with the Hub
        out_path.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(out_path, meta.etag)
        with open(part, "ab") as f:
            resume = f.tell()
            if resume:
                log.info("%s: resuming at byte %d of %s", part, resume, meta.size)
            http_get(
                meta.location,
                f,
                resume_size=resume,
                headers=headers,
                expected_size=meta.size,
                displayed_filename=Path(filename).name,
            )
    except hf_errors.GatedRepoError as err:
        raise HubError(
            f"{where}: gated repo; accept its terms on the Hub and set HF_TOKEN to a token with access"
        ) from err
    except hf_errors.RepositoryNotFoundError as err:
        raise HubError(
            f"{where}: repository not found or not authorised (HTTP {err.response.status_code}); "
            "check the repo id, and set HF_TOKEN for private or gated repos"
        ) from err
    except (hf_errors.RevisionNotFoundError, hf_errors.RemoteEntryNotFoundError) as err:
        raise HubError(f"{where}: revision or file not found on the Hub") from err
    except hf_errors.OfflineModeIsEnabled as err:
        raise HubError(
            f"{where}: HF_HUB_OFFLINE is set, cannot download; unset it or provide the file"
        ) from err
    except hf_errors.HfHubHTTPError as err:
        status = err.response.status_code
        hint = "; set HF_TOKEN to a token with access" if status in (401, 403) else ""
        raise HubError(f"{where}: HTTP {status} from the Hub{hint}") from err
    except _transport_errors() as err:  # refused, DNS, timeouts, dropped past the retries, size mismatch
        raise HubError(
            f"{where}: download failed ({type(err).__name__}: {err}); offline? rerun to resume"
        ) from err

    if meta.size is not None and part.stat().st_size != meta.size:
        raise HubError(f"{part}: {part.stat().st_size} bytes, the Hub says {meta.size}; rerun to resume")
    expected = sha256 or (meta.etag if _SHA256.match(meta.etag) else None)
    if expected is not None and (actual := sha256_of(part)) != expected:
        part.unlink()
        raise HubError(f"{where}: sha256 {actual} does not match {expected}; the partial file was removed")
    replace_durably(part, out_path)
    log.info("wrote %s (%d bytes)", out_path, out_path.stat().st_size)
    return out_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="where the file goes")
    parser.add_argument("--config", help="experiment YAML; with --key, take repo/file from it")
    parser.add_argument(
        "--key", help="dotted config key of a {repo_id, filename, ...} mapping, e.g. texture_vae.pretrained"
    )
    parser.add_argument("--repo-id", help="Hub repo, e.g. SFD-Project/SFD")
    parser.add_argument("--filename", help="path of the file in the repo")
    parser.add_argument("--revision", help="branch, tag or commit (default main)")
    parser.add_argument("--repo-type", default="model", choices=["model", "dataset"])
    parser.add_argument("--sha256", help="expected sha256 of the file")


def main(args) -> int:
    from sfd.config import ConfigError
    from sfd.reads import get, view

    if args.key:
        if not args.config:
            raise ConfigError("--key needs --config")
        spec = get(view(args.config, __name__, key=args.key), args.key, args.config)
        if not isinstance(spec, dict) or not {"repo_id", "filename"} <= set(spec):
            raise ConfigError(
                f"{args.config}: {args.key} must be a mapping with repo_id and filename, got {spec!r}"
            )
    elif args.repo_id and args.filename:
        spec = {
            "repo_id": args.repo_id,
            "filename": args.filename,
            "revision": args.revision,
            "repo_type": args.repo_type,
            "sha256": args.sha256,
        }
    else:
        raise ConfigError("give --config and --key, or --repo-id and --filename")
    download(
        spec["repo_id"],
        spec["filename"],
        args.out,
        revision=spec.get("revision"),
        repo_type=spec.get("repo_type", "model"),
        sha256=spec.get("sha256"),
    )
    return 0
