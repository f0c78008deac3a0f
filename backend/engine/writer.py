"""The output: path checks, a temporary GeoTIFF beside the target, block writes, rename.

Nothing ever appears at the output path until the whole raster (and its overviews or COG
layout) is written and checked: the data goes to ``.<name>.<random>.part.tif`` in the
target's folder, every GDAL write and close is checked (:class:`GdalErrors`), the finished
file is verified (:func:`verify_tiff`), synced, and renamed over the target; on any error,
cancel or Ctrl-C this run's temporary files are removed (and only this run's: a run holds
a lock on its file, so a later run can also remove what a killed one left behind).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window as RioWindow

try:
    import fcntl
except ImportError:  # Windows: no flock; stale files are then never judged dead and left alone
    fcntl = None  # type: ignore[assignment]

from backend.engine.options import EngineError
from backend.engine.plan import Block
from backend.errors import one_line

OUTPUT_SUFFIXES = (".tif", ".tiff")
BIGTIFF_THRESHOLD = 3_500_000_000
"""Classic TIFF tops out at 4 GiB; above this estimate (with overviews) write BigTIFF."""


def check_paths(input_path: Path, output_path: Path) -> None:
    """Refuse output == input, a non-GeoTIFF name and a missing or unwritable folder."""
    if output_path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise EngineError(f"output {output_path.name} must end with .tif or .tiff (GeoTIFF)")
    same = output_path.resolve() == input_path.resolve()
    if not same and output_path.exists() and input_path.exists():
        same = os.path.samefile(output_path, input_path)
    if same:
        raise EngineError("the output path is the input raster; choose another output file")
    folder = output_path.parent
    if not folder.exists():
        raise EngineError(f"output folder does not exist: {folder}; create it first")
    if not folder.is_dir():
        raise EngineError(f"output folder is not a directory: {folder}")
    if output_path.is_dir():
        raise EngineError(f"output path is a directory: {output_path}; give a file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".slimdiffsr-probe-", dir=folder)
    except OSError as exc:
        raise EngineError(f"cannot write to {folder} ({exc.strerror}); choose a writable folder") from None
    os.close(fd)
    os.unlink(probe)


def check_not_a_source(output_path: Path, input_path: Path, files: tuple[str, ...]) -> None:
    """Refuse an output that is any file the input reads from.

    A VRT (or a raster with a sidecar mask, an .aux.xml, a .ovr) reads other files: replacing
    one of them while the run reads it would corrupt the result and destroy the user's
    data. ``files`` is GDAL's file list of the input dataset.
    """
    out = output_path.resolve()
    for name in files:
        source = Path(name)
        if not source.is_absolute():
            source = input_path.parent / source
        try:
            same = source.resolve() == out or (
                out.exists() and source.exists() and os.path.samefile(source, out)
            )
        except OSError:
            same = False
        if same:
            raise EngineError(
                f"the output {output_path.name} is a file that the input {input_path.name} reads from "
                f"({source}); choose another output file"
            )


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB': sizes in the unit that makes them readable (never '0.00 GB')."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def estimate_bytes(width: int, height: int, count: int, dtype: str, overviews: bool, cog: bool) -> int:
    """Worst-case (uncompressed) size of the output, with overviews, and the COG copy."""
    size = width * height * count * np.dtype(dtype).itemsize
    if overviews or cog:
        size = size * 4 // 3
    return size


def check_disk_space(folder: Path, needed: int, cog: bool) -> None:
    """Refuse to start when the target's disk cannot hold the (uncompressed) result."""
    needed_total = needed * (2 if cog else 1)  # a COG is a copy of the finished temporary file
    free = shutil.disk_usage(folder).free
    if free < needed_total:
        raise EngineError(
            f"not enough free disk space in {folder}: the output may need up to {human_bytes(needed_total)} "
            f"(uncompressed) and {human_bytes(free)} are free; free space or choose another folder"
        )


DEFLATE_LEVEL = 1
"""DEFLATE effort for the output. GDAL's default (6) cost a quarter of a 1024^2 -> 4096^2
uint16 run on a 2-core CPU (24.3 s against 17.7 s uncompressed); level 1 takes 19.7 s for a
file 6 % larger (51.9 MB against 48.9 MB; 100.7 MB uncompressed). DEFLATE rather than the
slightly faster ZSTD because every GIS reads it."""


@dataclass(frozen=True)
class OutputSpec:
    """The output GeoTIFF as it must come out: size, bands, type, layout and finishing."""

    width: int
    height: int
    count: int
    dtype: str
    scale: int
    nodata: float | None
    compress: str
    block: int
    bigtiff: bool
    threads: str
    """GDAL's NUM_THREADS for compression: a number or ALL_CPUS."""
    georeferenced: bool = True
    overviews: bool = False
    cog: bool = False

    @property
    def expect(self) -> tuple[int, int, int, str]:
        """(width, height, count, dtype): what :func:`verify_tiff` checks."""
        return self.width, self.height, self.count, self.dtype


def output_profile(src: rasterio.io.DatasetReader, spec: OutputSpec) -> dict[str, Any]:
    """The output's creation options. Without georeferencing in the input the output gets
    none either (GDAL would otherwise record a made-up pixel grid at the origin)."""
    dtype, compress = spec.dtype, spec.compress
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": spec.width,
        "height": spec.height,
        "count": spec.count,
        "dtype": dtype,
        "tiled": True,
        "blockxsize": spec.block,
        "blockysize": spec.block,
        "interleave": "pixel",
        "bigtiff": "YES" if spec.bigtiff else "NO",
        "num_threads": spec.threads,
    }
    if spec.georeferenced:
        profile["transform"] = src.transform * Affine.scale(1 / spec.scale)
    if src.crs is not None:
        profile["crs"] = src.crs
    if spec.nodata is not None:
        profile["nodata"] = spec.nodata
    if compress and compress.lower() != "none":
        profile["compress"] = compress
        if compress.lower() in ("deflate", "lzw", "zstd"):
            profile["predictor"] = 3 if np.dtype(dtype).kind == "f" else 2
        if compress.lower() == "deflate":
            profile["zlevel"] = DEFLATE_LEVEL
    return profile


def copy_metadata(
    src: rasterio.io.DatasetReader,
    dst: rasterio.io.DatasetWriter,
    bands: tuple[int, ...],
    alpha: int | None,
    provenance: dict[str, str],
) -> None:
    """Band descriptions, colour interpretation, units, scales/offsets and tags, plus provenance."""
    out_bands = [*bands, *([alpha] if alpha else [])]
    ci = [src.colorinterp[b - 1] for b in bands]
    if alpha:
        ci.append(ColorInterp.alpha)
    try:
        dst.colorinterp = ci
    except (RasterioError, ValueError):
        pass  # GTiff cannot express every combination; the data are unaffected
    for i, b in enumerate(out_bands, start=1):
        desc = src.descriptions[b - 1]
        if desc:
            dst.set_band_description(i, desc)
        tags = src.tags(b)
        if tags:
            dst.update_tags(i, **tags)
    dst.units = tuple(src.units[b - 1] or "" for b in out_bands)
    dst.scales = tuple(src.scales[b - 1] for b in out_bands)
    dst.offsets = tuple(src.offsets[b - 1] for b in out_bands)
    tags = dict(src.tags())
    tags.update(provenance)
    dst.update_tags(**tags)


class GdalErrors:
    """GDAL's failures (CE_Failure) signalled while a :meth:`watch` block runs in this thread.

    GDAL reports some write errors only through its error handler (a block flushed from the
    cache when it is full, the directory written at close, an overview level): the call
    that caused them returns normally and rasterio only logs them (logger
    ``rasterio._err``, level INFO). A disk that fills during a run must fail the run, so
    the writer watches every write, the close and the finishing steps through this.
    Messages from other Python threads (the reader's) are not counted; GDAL's own worker
    threads (compression) are, while any watch is active.
    """

    _FORMAT = "GDAL signalled an error: err_no=%r, msg=%r"
    _lock = threading.Lock()
    _active: ClassVar[dict[int, list[str]]] = {}
    _installed = False

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg != GdalErrors._FORMAT or not isinstance(record.args, tuple) or len(record.args) < 2:
                return
            message = str(record.args[1])
            with GdalErrors._lock:
                sink = GdalErrors._active.get(threading.get_ident())
                if sink is None and isinstance(threading.current_thread(), threading._DummyThread):
                    sink = next(iter(GdalErrors._active.values()), None)
                if sink is not None:
                    sink.append(message)

    @classmethod
    def _install(cls) -> None:
        with cls._lock:
            if cls._installed:
                return
            logger = logging.getLogger("rasterio._err")
            if not logger.isEnabledFor(logging.INFO):
                logger.setLevel(logging.INFO)
            logger.addHandler(cls._Handler(logging.INFO))
            cls._installed = True

    @classmethod
    @contextlib.contextmanager
    def watch(cls, what: str) -> Iterator[None]:
        """Raise a run-stage EngineError for any GDAL failure (or RasterioError) inside."""
        cls._install()
        key = threading.get_ident()
        sink: list[str] = []
        with cls._lock:
            outer = cls._active.get(key)
            cls._active[key] = sink
        try:
            yield
        except RasterioError as exc:
            sink.append(one_line(exc, 200))
        finally:
            with cls._lock:
                if outer is None:
                    cls._active.pop(key, None)
                else:
                    cls._active[key] = outer
                    outer.extend(sink)
        if sink:
            raise write_failure(what, sink)


def write_failure(what: str, messages: list[str]) -> EngineError:
    """One line from GDAL's messages: the system's reason (no space, I/O error) first."""
    reasons = [m.split(":", 1)[1].strip() if ":" in m and "Proc:" in m else m for m in messages]
    reason = next((r for r in reasons if "space" in r.lower() or "quota" in r.lower()), reasons[0])
    full = "space" in reason.lower() or "quota" in reason.lower()
    hint = "free disk space or choose another folder" if full else "check the disk and the output folder"
    return EngineError(
        f"{what} failed ({one_line(reason, 160)}); {hint}. The previous output, if any, was kept", "run"
    )


PART_PATTERN = r"\.{stem}\.(?P<token>[0-9a-f]{{8}})\.part(?:\..*)?"
"""Names of a run's temporary files beside the output ``<stem>.tif``: the GeoTIFF
``.<stem>.<token>.part.tif`` and its side files (``.part.cog.tif``, ``.part.tif.aux.xml``,
``.part.tif.ovr``). The eight hex digits keep another output's files (``<stem>.x.tif``)
out of the match."""


def _part_files(target: Path, token: str | None = None) -> dict[str, list[Path]]:
    """This output's temporary files in its folder, by token."""
    pattern = re.compile(PART_PATTERN.format(stem=re.escape(target.stem)))
    found: dict[str, list[Path]] = {}
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return found
    for p in entries:
        m = pattern.fullmatch(p.name)
        if m and (token is None or m["token"] == token):
            found.setdefault(m["token"], []).append(p)
    return found


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def remove_stale_parts(target: Path) -> list[Path]:
    """Remove temporary files of ``target`` left by runs that died (SIGKILL, power cut).

    A live run holds an exclusive ``flock`` on its ``.part.tif`` for as long as it runs;
    a file that can be locked has no owner any more. A live run's files are never touched,
    whoever started it. Returns the removed paths.
    """
    removed: list[Path] = []
    if fcntl is None:
        return removed
    for token, files in _part_files(target).items():
        main = target.with_name(f".{target.stem}.{token}.part.tif")
        fd = None
        if main.exists():
            try:
                fd = os.open(main, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # locked: a live run (or unreadable: not ours to judge)
                if fd is not None:
                    os.close(fd)
                continue
        try:
            for p in files:
                _unlink(p)
                removed.append(p)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


class TempOutput:
    """A temporary GeoTIFF beside ``target``; :meth:`finish` renames, :meth:`discard` removes.

    :meth:`create` makes the file and holds an exclusive lock on it until the run ends, so
    that :func:`remove_stale_parts` in another run can tell it from a dead run's leftover.
    Only files this object created are ever removed by it.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.token = uuid.uuid4().hex[:8]
        self.path = target.with_name(f".{target.stem}.{self.token}.part.tif")
        self._extra: list[Path] = []
        self._lock_fd: int | None = None

    def create(self) -> None:
        """Create the (empty) temporary file and lock it; GDAL then writes into it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self.token = uuid.uuid4().hex[:8]
                self.path = self.target.with_name(f".{self.target.stem}.{self.token}.part.tif")
                continue
            except OSError as exc:
                raise EngineError(
                    f"cannot create the output in {self.target.parent} ({exc.strerror}); "
                    "choose a writable folder with free space",
                    "run",
                ) from None
            if fcntl is None:
                self._lock_fd = fd
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # another run's stale-file clean-up may have removed it between open and lock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)

    def side_file(self, suffix: str) -> Path:
        p = self.path.with_name(self.path.stem + suffix)
        self._extra.append(p)
        return p

    def _own_files(self) -> list[Path]:
        files = [self.path, *self._extra]
        for p in list(files):
            files += [
                p.with_name(p.name + ".aux.xml"),
                p.with_name(p.name + ".ovr"),
                p.with_name(p.name + ".msk"),
            ]
        return files

    def discard(self) -> None:
        """Remove every file this run created (never another run's), then release the lock."""
        for p in self._own_files():
            _unlink(p)
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def finish(self, spec: OutputSpec) -> None:
        """Verify, add overviews and the COG layout, verify again, then rename over the target.

        Every GDAL step is watched (:class:`GdalErrors`); a file that is incomplete in any
        way never reaches the target.
        """
        final = self.path
        expect, block, compress = spec.expect, spec.block, spec.compress
        overviews, cog, bigtiff = spec.overviews, spec.cog, spec.bigtiff
        verify_tiff(self.path, expect, block)
        try:
            if overviews or cog:
                with GdalErrors.watch("building overviews"), rasterio.open(self.path, "r+") as ds:
                    factors = overview_factors(ds.width, ds.height, block)
                    if factors:
                        ds.build_overviews(factors, Resampling.average)
                        ds.update_tags(ns="rio_overview", resampling="average")
                verify_tiff(self.path, expect, block, overviews=True)
            if cog:
                final = self.side_file(".cog.tif")
                with GdalErrors.watch("writing the COG"):
                    rasterio.shutil.copy(
                        self.path,
                        final,
                        driver="COG",
                        compress=compress or "deflate",
                        blocksize=block,
                        overviews="FORCE_USE_EXISTING",
                        bigtiff="YES" if bigtiff else "IF_SAFER",
                        num_threads="ALL_CPUS",
                    )
                verify_tiff(final, expect, block, overviews=True)
        except EngineError:
            raise
        except (RasterioError, TypeError, ValueError, OSError) as exc:
            # rasterio raises TypeError for a file it cannot recognise (a damaged temporary file)
            raise EngineError(
                f"finishing the output failed ({one_line(exc, 200)}); free disk space or "
                "choose another folder. The previous output, if any, was kept",
                "run",
            ) from None
        try:
            _fsync(final)
            os.replace(final, self.target)
            _fsync(self.target.parent)
        except OSError as exc:
            raise EngineError(
                f"cannot put the output in place at {self.target} ({exc.strerror}); "
                "the previous output, if any, was kept",
                "run",
            ) from None
        self.discard()


def _fsync(path: Path) -> None:
    """Push the file (or folder entry) to the disk: some file systems report a full disk or
    an I/O error only here, and a rename must not publish data that never arrived."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # folders on some file systems
            raise
    finally:
        os.close(fd)


def verify_tiff(path: Path, expect: tuple[int, int, int, str], block: int, overviews: bool = False) -> None:
    """Check a finished GeoTIFF before it may replace anything: it opens, has the expected
    size, bands and type, every tile of band 1 has a place in the file and the file is long
    enough to hold them, the last tile decodes, and overviews exist when asked for.

    Cheap (the tile index and one tile), so it runs on every output whatever its size.
    """
    width, height, count, dtype = expect
    problem = None
    try:
        size = path.stat().st_size
        with GdalErrors.watch("checking the output"), rasterio.open(path) as ds:
            if (ds.width, ds.height, ds.count, ds.dtypes[0]) != (width, height, count, dtype):
                problem = (
                    f"it is {ds.width}x{ds.height}x{ds.count} {ds.dtypes[0]}, expected "
                    f"{width}x{height}x{count} {dtype}"
                )
            else:
                bw, bh = ds.block_shapes[0][1], ds.block_shapes[0][0]
                nx, ny = -(-width // bw), -(-height // bh)
                for y in range(ny):
                    for x in range(nx):
                        off = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1)
                        n = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1)
                        if not off or not n or int(n) <= 0 or int(off) + int(n) > size:
                            problem = f"tile {x},{y} is missing or cut off"
                            break
                    if problem:
                        break
                if problem is None:
                    ds.read(
                        1,
                        window=RioWindow(
                            (nx - 1) * bw, (ny - 1) * bh, width - (nx - 1) * bw, height - (ny - 1) * bh
                        ),
                    )
                if problem is None and overviews and not ds.overviews(1):
                    problem = "its overviews are missing"
    except EngineError as exc:
        raise EngineError(f"the written output is damaged ({str(exc)[:200]})", "run") from None
    except (RasterioError, TypeError, ValueError, OSError) as exc:
        problem = one_line(exc, 200)
    if problem:
        raise EngineError(
            f"the written output is incomplete ({problem}); is the disk full? Free disk "
            "space or choose another folder. The previous output, if any, was kept",
            "run",
        )


def overview_factors(width: int, height: int, block: int) -> list[int]:
    """2, 4, 8, ... until the smallest level fits in one block."""
    factors, f = [], 2
    while max(width, height) / f >= block / 2 and f <= 1024:
        factors.append(f)
        f *= 2
    return factors or [2]


def write_block(
    dst: rasterio.io.DatasetWriter,
    block: Block,
    data: np.ndarray,
    alpha: np.ndarray | None,
    mask: np.ndarray | None,
) -> None:
    win = RioWindow(block.x0, block.y0, block.width, block.height)
    n = data.shape[0]
    dst.write(data, indexes=list(range(1, n + 1)), window=win)
    if alpha is not None:
        dst.write(alpha.astype(dst.dtypes[n]), indexes=n + 1, window=win)
    if mask is not None:
        dst.write_mask(np.where(mask, 255, 0).astype(np.uint8), window=win)


def upsample_nearest(a: np.ndarray, scale: int, block: Block, origin: tuple[int, int]) -> np.ndarray:
    """Nearest x``scale`` of the input pixels under ``block``; ``origin`` = their (row, col) offset."""
    up = np.repeat(np.repeat(a, scale, axis=-2), scale, axis=-1)
    oy, ox = block.y0 - origin[0] * scale, block.x0 - origin[1] * scale
    return up[..., oy : oy + block.height, ox : ox + block.width]
