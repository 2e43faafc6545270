"""`sfd fetch-eval-assets`: ADM's Inception GraphDef and reference batch, verified and resumable.

A download goes to `<name>.part`; an interrupted one is continued with an HTTP Range request on
the next run, and the file appears under its final name (an atomic rename) only after its sha256
checks out. An asset whose sha256 is null in the config is trusted on first download: its hash
is printed and recorded in `<name>.sha256`, and every later run checks the file against it.
"""

import contextlib
import http.client
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from sfd.errors import UserError
from sfd.io import replace_durably, sha256, write_text

log = logging.getLogger(__name__)

# Experiment keys this command reads (sfd/reads.py): READS shape its output, ALSO_READS do not.
READS = ("evaluation.assets",)

CHUNK = 1 << 20


class AssetError(UserError, RuntimeError):
    """An asset that could not be fetched or does not match its recorded hash."""


def asset_filename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _download(url: str, part: Path, dest: Path, timeout: float) -> None:
    """Append the rest of `url` to `part`, asking for bytes from its current size onwards."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left past `offset`: the part is already whole
            return
        raise AssetError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise AssetError(
            f"cannot reach {url} ({reason}). This machine may be offline: download the file elsewhere "
            f"and put it at {dest}, then rerun to verify it."
        ) from None
    with response:
        resumed = offset and response.status == 206
        if offset and not resumed:
            log.info("%s: server ignored the range request; downloading from the start", url)
        if resumed:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise AssetError(
                    f"{url}: bad Content-Range {response.headers.get('Content-Range')!r} for offset {offset}"
                )
        length = response.headers.get("Content-Length")
        start = offset if resumed else 0
        total = start + int(length) if length is not None else None
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=part.stem) as bar,
        ):
            try:
                while block := response.read(CHUNK):
                    f.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as err:
                raise AssetError(f"{url}: transfer broke off ({err}); rerun to resume from {part}") from None
    if total is not None and part.stat().st_size != total:
        raise AssetError(f"{url}: got {part.stat().st_size} of {total} bytes; rerun to resume from {part}")


def fetch(url: str, out_dir, expected_sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Make `out_dir/<file name of url>` present and verified; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / asset_filename(url)
    record = dest.with_name(dest.name + ".sha256")
    pinned = expected_sha256 or (record.read_text().split()[0] if record.is_file() else None)
    if dest.is_file():
        digest = sha256(dest)
        if pinned is not None and digest != pinned:
            raise AssetError(
                f"{dest}: sha256 {digest} differs from the expected {pinned}; delete it to download again"
            )
        log.info("%s: present%s", dest, "" if pinned is None else ", sha256 verified")
    else:
        part = dest.with_name(dest.name + ".part")
        log.info("downloading %s -> %s", url, dest)
        _download(url, part, dest, timeout)
        digest = sha256(part)
        if pinned is not None and digest != pinned:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise AssetError(f"{url}: downloaded file has sha256 {digest}, expected {pinned}; removed it")
        replace_durably(part, dest)
    if pinned is None:
        write_text(f"{digest}  {dest.name}\n", record)
        print(f"{dest.name}: sha256 {digest} (not pinned in the config; recorded in {record.name})")
    return dest


def add_arguments(parser) -> None:
    parser.add_argument(
        "--config", required=True, help="experiment YAML (evaluation.assets: url + sha256 per asset)"
    )
    parser.add_argument("--out-dir", required=True, help="directory to put the assets in")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="fetch only these assets (default: all)")


def main(args) -> int:
    from sfd.config import ConfigError
    from sfd.reads import view

    assets = view(args.config, __name__)["evaluation"]["assets"]
    names = args.only or list(assets)
    unknown = sorted(set(names) - set(assets))
    if unknown:
        raise ConfigError(
            f"{args.config}: evaluation.assets has no {', '.join(unknown)} (it has {', '.join(assets)})"
        )
    for name in names:
        path = fetch(assets[name]["url"], args.out_dir, assets[name]["sha256"])
        log.info("%s: %s", name, path)
    return 0
