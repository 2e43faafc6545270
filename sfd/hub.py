"""Hugging Face Hub downloads for every part of the pipeline, plus `sfd fetch-weights`.

`download` resolves a file with the Hub's own metadata call (so private/gated repos, redirects
and error codes behave as in huggingface_hub), then hands the transfer to `sfd.transfer.fetch_url`,
the pipeline's one resumable download (huggingface_hub's `http_get` into a `.part` file, Range on
the next call, size and sha256 checked before an atomic rename). The part file is named after the
remote ETag, so a file changed on the Hub restarts instead of resuming; an LFS ETag is the file's
sha256 and is checked as such.

The token comes from the environment (HF_TOKEN, else huggingface_hub's stored login) and is
never logged. HF_ENDPOINT is read at call time, so a mirror (or a test server) can be set late.
"""

import argparse
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from sfd.io import sha256 as sha256_of
from sfd.transfer import DownloadError, fetch_url, transport_errors

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("{key}",)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class HubError(DownloadError):
    """A file the Hub would not give (offline, unauthorised, not found); the message says what to do."""


def part_path(out_path: Path, etag: str) -> Path:
    """The resumable partial file for `out_path`; keyed by ETag so a changed remote file restarts."""
    return out_path.with_name(f".{out_path.name}.{re.sub(r'[^0-9A-Za-z]', '', etag)[:16]}.part")


def _metadata(url: str, token: str | None, endpoint: str | None, where: str):
    """The Hub's metadata of `url` (location, ETag, size), its refusals turned into HubErrors."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import get_hf_file_metadata

    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
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
    except transport_errors() as err:  # refused, DNS, timeouts
        raise HubError(f"{where}: cannot reach the Hub ({type(err).__name__}: {err}); offline?") from err
    if meta.etag is None:
        raise HubError(f"{where}: the server sent no ETag; is HF_ENDPOINT a Hugging Face Hub?")
    return meta


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
    file does not exist; DownloadError when the transfer breaks off or the file does not check out.
    """
    from huggingface_hub import hf_hub_url
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
    meta = _metadata(url, token, endpoint, where)
    headers = build_hf_headers(token=token)
    if urlparse(meta.location).netloc != urlparse(url).netloc:
        headers.pop("authorization", None)  # signed CDN url: credentials stay with the Hub
    fetch_url(
        meta.location,
        out_path,
        part_path(out_path, meta.etag),
        headers=headers,
        expected_size=meta.size,
        sha256=sha256 or (meta.etag if _SHA256.match(meta.etag) else None),
        what=where,
    )
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
