"""Fault suite: bad rasters, bad weights, bad parameters, full disks, interrupted and
concurrent runs, through the command line and through ``qgis_process``.

Every case checks what the README promises: the documented exit code, one line of error
and no traceback, nothing left behind, the input unchanged and an older output kept (one
checksum comparison of the whole folder before and after), and a normal run afterwards
still works. Full and read-only disks are real tmpfs mounts (skipped where mounting is not
allowed).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import fill_disk, folder_state, random_rgb, write_raster

from backend.engine import UpscaleOptions, upscale_raster
from backend.inference import SuperResolver
from backend.weights import load_weights
from devtools.compact import NANO, write_random_weights

ROOT = Path(__file__).resolve().parent.parent
OLD = b"the previous output, which a failed run must not touch"
OPTS = UpscaleOptions(device="cpu", precision="fp32", tile_size=64)


@pytest.fixture(scope="module")
def nano(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("w") / "nano_x4.safetensors", NANO, 4)


@functools.cache
def loaded(weights: Path) -> SuperResolver:
    """``weights`` loaded once for the runs this process makes: they check what a failure
    left behind (files, locks), which does not depend on the model; loading weights is
    what the command-line cases exercise."""
    return SuperResolver.from_weights(load_weights(weights), "cpu", "fp32")


def cli_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "backend.cli", "upscale", *map(str, args), "--quiet"]


def start_cli(src: Path, out: Path, nano: Path, *flags: object) -> subprocess.Popen:
    """A CLI run of ``src`` into ``out`` on the CPU in 64-pixel tiles, left running."""
    args = cli_command(src, out, "--weights", nano, "--device", "cpu", "--tile-size", 64, *flags)
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, pattern: str) -> str:
    text = r.stdout + r.stderr
    assert r.returncode == code, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert r.stdout.strip() == ""
    return lines[0]


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


def normal_run_works(folder: Path, nano: Path, out: Path | None = None) -> None:
    """A good raster into ``out`` (default: ``folder/out.tif``) succeeds and leaves no
    temporary file: the failure before left nothing in the way."""
    src = write_raster(folder / "good.tif", random_rgb(64, seed=3))
    out = out or folder / "out.tif"
    upscale_raster(src, out, loaded(nano), OPTS)
    with rasterio.open(out) as dst:
        assert (dst.width, dst.height, dst.count) == (256, 256, 3)
        assert dst.read(1, window=((250, 256), (250, 256))).any()
    assert parts(out.parent) == []
    src.unlink()


# -- bad inputs, weights and parameters through the command line ---------------------------------


@dataclass(frozen=True)
class Case:
    """``build(work, nano)`` -> extra CLI arguments; it may replace ``work/in.tif``."""

    id: str
    build: Callable[[Path, Path], list[object]]
    code: int
    pattern: str


def default_args(work: Path, nano: Path, *extra: object, src: str = "in.tif", out: str = "out.tif") -> list:
    # torch fp32 unless the case says otherwise (the last option wins): the cheapest start
    # for a run that fails before its tiles, where precision auto would first build and
    # probe an OpenVINO network (2 s of CPU; on whole rasters auto is the faster one)
    args = ["--weights", nano, "--device", "cpu", "--tile-size", 64, "--precision", "fp32"]
    return [work / src, work / out, *args, *extra]


def with_input(maker: Callable[[Path], None], *extra: object) -> Callable[[Path, Path], list[object]]:
    def build(work: Path, nano: Path) -> list[object]:
        (work / "in.tif").unlink()
        maker(work / "in.tif")
        return default_args(work, nano, *extra)

    return build


def opts(*extra: object, **kw: str) -> Callable[[Path, Path], list[object]]:
    return lambda work, nano: default_args(work, nano, *extra, **kw)


def vrt_over_output(work: Path, nano: Path) -> list[object]:
    """``gdalbuildvrt in.vrt x.tif; slimdiffsr upscale in.vrt x.tif`` (numbered case 4)."""
    write_raster(work / "x.tif", random_rgb(64, seed=1))
    with rasterio.open(work / "x.tif") as src:
        bands = "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
            f'<SourceFilename relativeToVRT="1">x.tif</SourceFilename><SourceBand>{b}</SourceBand>'
            "</SimpleSource></VRTRasterBand>"
            for b in (1, 2, 3)
        )
        (work / "in.vrt").write_text(
            f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">'
            f"<SRS>{src.crs.to_wkt()}</SRS>"
            f"<GeoTransform>{', '.join(map(str, src.transform.to_gdal()))}</GeoTransform>"
            f"{bands}</VRTDataset>"
        )
    return default_args(work, nano, src="in.vrt", out="x.tif")


def bad_architecture(field: str, value: object) -> Callable[[Path, Path], list[object]]:
    """A .safetensors file whose metadata declares ``field: value`` (numbered case 6)."""

    def build(work: Path, nano: Path) -> list[object]:
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(nano), framework="pt") as f:
            meta = dict(f.metadata())
            state = {k: f.get_tensor(k) for k in f.keys()}
        arch = json.loads(meta["architecture"])
        arch[field] = value
        meta["architecture"] = json.dumps(arch)
        save_file(state, str(work / "bad.safetensors"), metadata=meta)
        return [work / "in.tif", work / "out.tif", "--weights", work / "bad.safetensors", "--device", "cpu"]

    return build


def scale_metadata(work: Path, nano: Path) -> list[object]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(nano), framework="pt") as f:
        meta = {**f.metadata(), "scale": "four"}
        state = {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(work / "w.safetensors"), metadata=meta)
    return [work / "in.tif", work / "out.tif", "--weights", work / "w.safetensors", "--device", "cpu"]


def zip_bomb(work: Path, nano: Path) -> list[object]:
    """A 12 MB ``.pt`` that unpacks to 2.7 GB (deflated zeros)."""
    bomb = work / "bomb_x4.pt"
    with (
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z,
        z.open("archive/data.pkl", "w", force_zip64=True) as f,
    ):
        chunk = bytes(64 << 20)
        for _ in range(40):
            f.write(chunk)
    return [work / "in.tif", work / "out.tif", "--weights", bomb, "--device", "cpu"]


def pickled_code(work: Path, nano: Path) -> list[object]:
    class Evil:
        def __reduce__(self):  # would run a shell command when unpickled
            return (os.system, ("touch " + str(work / "pwned"),))

    import torch

    torch.save({"state_dict": Evil()}, work / "evil_x4.pkl")
    return [work / "in.tif", work / "out.tif", "--weights", work / "evil_x4.pkl", "--device", "cpu"]


def weights_file(name: str, content: bytes) -> Callable[[Path, Path], list[object]]:
    def build(work: Path, nano: Path) -> list[object]:
        (work / name).write_bytes(content)
        return [work / "in.tif", work / "out.tif", "--weights", work / name, "--device", "cpu"]

    return build


def damaged_tiles(path: Path) -> None:
    """Header fine, compressed tiles in the middle overwritten."""
    write_raster(path, random_rgb(256, seed=2), tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 6000] = b"\xff" * 6000
    path.write_bytes(bytes(raw))


def no_cuda(work: Path, nano: Path) -> list[object]:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    return default_args(work, nano, "--device", "cuda")


CASES = [
    # numbered cases of the issue
    Case("4-vrt-source-as-output", vrt_over_output, 2, "reads from"),
    Case("5-nodata-300-uint8", opts("--nodata", 300), 2, r"nodata value 300 .*0 to 255"),
    Case("5-nodata-nan-uint8", opts("--nodata", "nan"), 2, "nodata value nan"),
    Case("5-nodata-inf-uint8", opts("--nodata", "inf"), 2, "nodata value inf"),
    Case("6-architecture-wrong-type", bad_architecture("vae_channels", "lots"), 2, "vae_channels is 'lots'"),
    Case(
        "6-architecture-too-large",
        bad_architecture("unet_channels", [65536, 65536, 65536]),
        2,
        "declares a network of .* GB .* memory",
    ),
    Case("6-zip-bomb", zip_bomb, 2, r"would unpack to 2\.7 GB"),
    Case(
        "9-all-nodata-uint8",
        with_input(lambda p: write_raster(p, np.zeros((3, 64, 64), np.uint8), nodata=0)),
        2,
        "no valid pixel",
    ),
    Case(
        "9-all-nan-float",
        with_input(lambda p: write_raster(p, np.full((3, 64, 64), np.nan, np.float32))),
        2,
        "no valid pixel",
    ),
    # bad rasters
    Case("text-file-named-tif", with_input(lambda p: p.write_text("not a raster\n")), 2, "cannot read"),
    Case("empty-file", with_input(lambda p: p.write_bytes(b"")), 2, "cannot read"),
    Case(
        "truncated-header",
        with_input(lambda p: p.write_bytes(write_raster(p, random_rgb()).read_bytes()[:300])),
        2,
        "cannot read|reading in.tif failed",
    ),
    Case(
        "tiles-damaged-mid-file", with_input(damaged_tiles), 2, r"reading in.tif failed .*TIFFReadEncodedTile"
    ),
    Case("raster-too-small", with_input(lambda p: write_raster(p, random_rgb(4))), 2, "at least 8x8"),
    Case("input-missing", opts(src="nope.tif"), 2, "input not found"),
    Case("input-is-a-folder", opts(src="."), 2, "is a directory"),
    Case("nodata-negative-uint8", opts("--nodata", -1), 2, "nodata value -1"),
    Case("nodata-fraction-uint8", opts("--nodata", 0.5), 2, "whole numbers"),
    Case(
        "nodata-beyond-float32",
        with_input(lambda p: write_raster(p, random_rgb(dtype="float32")), "--nodata", "1e40"),
        2,
        "float32 pixels cannot exceed",
    ),
    # bad parameters
    Case("band-missing", opts("--bands", "9"), 2, "does not exist"),
    Case("band-repeated", opts("--bands", "1,1"), 2, "repeats"),
    Case("band-not-a-number", opts("--bands", "red"), 2, "not a list of band numbers"),
    Case("tile-too-small", opts("--tile-size", 4), 2, "tile"),
    Case("overlap-negative", opts("--overlap", -1), 2, "overlap"),
    Case("batch-zero", opts("--batch-size", 0), 2, "batch size"),
    Case("fp16-on-cpu", opts("--precision", "fp16"), 2, "fp16 is not supported on the CPU"),
    Case("cuda-without-gpu", no_cuda, 2, "cuda"),
    Case("scale-disagrees-with-weights", opts("--scale", 8), 2, "x8 was requested"),
    # bad outputs
    Case("output-not-geotiff", opts(out="out.png"), 2, r"must end with \.tif"),
    Case("output-folder-missing", opts(out="missing/out.tif"), 2, "does not exist"),
    Case(
        "output-is-a-folder",
        lambda w, n: (w / "dir.tif").mkdir() or default_args(w, n, out="dir.tif"),
        2,
        "is a directory",
    ),
    Case("output-is-the-input", opts(out="in.tif"), 2, "is the input"),
    Case(
        "output-links-to-input",
        lambda w, n: os.symlink(w / "in.tif", w / "link.tif") or default_args(w, n, out="link.tif"),
        2,
        "is the input",
    ),
    # bad weights
    Case("weights-missing", opts("--weights", "/nonexistent/w.safetensors"), 2, "weights file not found"),
    Case("weights-corrupt-safetensors", weights_file("c.safetensors", b"\x00" * 100), 2, "not a readable"),
    Case("weights-unknown-format", weights_file("w.txt", b"weights"), 2, "unknown weights format"),
    Case(
        "weights-truncated-pt", weights_file("t_x4.pt", b"PK\x03\x04" + b"\x00" * 60), 2, "could not be read"
    ),
    Case("weights-pickled-code", pickled_code, 2, "refused"),
    Case("weights-scale-not-a-number", scale_metadata, 2, "scale as 'four'"),
]


@dataclass
class Outcome:
    """One case's run: its folder, the folder's state before, and the finished CLI run (or
    what stopped the case before it, e.g. a skip)."""

    work: Path
    before: dict[str, str] | None = None
    run: subprocess.CompletedProcess | None = None
    stopped: BaseException | None = None


def run_case(case: Case, work: Path, nano: Path) -> Outcome:
    outcome = Outcome(work)
    try:
        work.mkdir()
        write_raster(work / "in.tif", random_rgb(64))
        (work / "out.tif").write_bytes(OLD)
        args = case.build(work, nano)
        outcome.before = folder_state(work)
        outcome.run = run_cli(*args)
    except BaseException as exc:  # pytest.skip is a BaseException; the test raises it again
        outcome.stopped = exc
    return outcome


@pytest.fixture(scope="module")
def cli_outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nano: Path):
    """The selected cases' CLI runs, two at a time (each in its own folder, so independent):
    a failing run is mostly an interpreter and torch starting, one core each, and the
    machine that runs ``make test`` has two."""
    from concurrent.futures import ThreadPoolExecutor

    selected = {
        item.callspec.params["case"].id
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_cli_fault" and hasattr(item, "callspec")
    }
    base = tmp_path_factory.mktemp("cli")
    cases = [c for c in CASES if c.id in selected]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = pool.map(lambda c: run_case(c, base / c.id, nano), cases)
        return {c.id: o for c, o in zip(cases, outcomes, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_fault(case: Case, cli_outcomes: dict[str, Outcome], nano: Path) -> None:
    outcome = cli_outcomes[case.id]
    if outcome.stopped is not None:
        raise outcome.stopped
    assert outcome.run is not None
    work = outcome.work
    assert_one_line_error(outcome.run, case.code, case.pattern)
    assert folder_state(work) == outcome.before
    assert not (work / "pwned").exists()
    if (work / "x.tif").exists():  # the VRT case: its source, the would-be output, also works as output
        normal_run_works(work, nano, work / "x.tif")
    normal_run_works(work, nano)


# -- full and read-only disks --------------------------------------------------------------------


def _held(path: Path) -> bool:
    """Whether another process holds the lock a live run keeps on its temporary file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def stop_when_writing(
    proc: subprocess.Popen,
    folder: Path,
    stem: str,
    pid: Callable[[], int] | None = None,
    timeout: float = 180,
) -> int:
    """Wait until the run's temporary file appears in ``folder`` and is locked by its run,
    then SIGSTOP the process that writes it (``pid()``, default the child itself); returns
    that pid. (Stopped between creating the file and locking it, the run would leave an
    unlocked file that another run's clean-up rightly takes for a dead run's.)"""
    deadline = time.monotonic() + timeout
    while not any(_held(p) for p in folder.glob(f".{stem}.*.part.tif")):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before writing: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no temporary file appeared")
        time.sleep(0.002)
    target = pid() if pid else proc.pid
    os.kill(target, signal.SIGSTOP)
    return target


def fill_while_stopped(
    proc: subprocess.Popen, small: Path, pid: Callable[[], int] | None = None, timeout: float = 300
) -> tuple[int, str, str]:
    """The disk fills while the run writes its output: stop it as it starts writing, fill the
    tmpfs, let it go on (numbered cases 1 and 2)."""
    target = stop_when_writing(proc, small, "o", pid)
    try:
        fill_disk(small)
    finally:
        os.kill(target, signal.SIGCONT)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.parametrize(
    ("flags", "size"),
    [((), "4m"), (("--overviews",), "6m"), (("--cog",), "12m")],
    ids=["1-plain", "2-overviews", "cog"],
)
def test_disk_fills_during_the_run(
    tmp_path: Path, tmpfs, nano: Path, flags: tuple[str, ...], size: str
) -> None:
    src = write_raster(tmp_path / "rgb256.tif", random_rgb(256))
    small = tmpfs("small", size)
    (small / "o.tif").write_bytes(OLD)
    before = folder_state(small, tmp_path / "rgb256.tif")
    proc = start_cli(src, small / "o.tif", nano, *flags)
    code, out, err = fill_while_stopped(proc, small)
    assert_one_line_error(subprocess.CompletedProcess([], code, out, err), 1, "No space left on device")
    (small / "fill").unlink()
    assert folder_state(small, tmp_path / "rgb256.tif") == before
    normal_run_works(small, nano, small / "o.tif")


def test_too_little_space_is_said_in_megabytes(tmp_path: Path, tmpfs, nano: Path) -> None:
    src = write_raster(tmp_path / "rgb256.tif", random_rgb(256))
    small = tmpfs("small", "1m")
    (small / "o.tif").write_bytes(OLD)
    before = folder_state(small)
    r = run_cli(src, small / "o.tif", "--weights", nano, "--device", "cpu", "--tile-size", 64)
    line = assert_one_line_error(r, 2, r"not enough free disk space .* up to 3\.1 MB .* free")
    assert "0.00 GB" not in line
    assert folder_state(small) == before


def test_read_only_target_folder(tmp_path: Path, tmpfs, nano: Path) -> None:
    src = write_raster(tmp_path / "in.tif", random_rgb(64))
    ro = tmpfs("ro", "1m", readonly=True)
    before = folder_state(tmp_path)
    r = run_cli(src, ro / "out.tif", "--weights", nano, "--device", "cpu", "--tile-size", 64)
    assert_one_line_error(r, 2, "cannot write to .*Read-only file system")
    assert folder_state(tmp_path) == before
    normal_run_works(tmp_path, nano)


# -- interrupted and concurrent runs -------------------------------------------------------------


def slow_input(folder: Path) -> Path:
    return write_raster(folder / "in.tif", random_rgb(256))


def test_sigkill_leftover_is_removed_by_the_next_run(tmp_path: Path, nano: Path) -> None:
    """Numbered case 8: a killed run cannot clean up; the next run for that output does."""
    src = slow_input(tmp_path)
    (tmp_path / "o.tif").write_bytes(OLD)
    proc = start_cli(src, tmp_path / "o.tif", nano)
    stop_when_writing(proc, tmp_path, "o")
    proc.kill()
    proc.communicate()
    left = parts(tmp_path)
    assert len(left) == 1 and re.fullmatch(r"\.o\.[0-9a-f]{8}\.part\.tif", left[0])
    assert (tmp_path / "o.tif").read_bytes() == OLD
    normal_run_works(tmp_path, nano, tmp_path / "o.tif")  # removes the dead run's file
    assert parts(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_leaves_nothing(tmp_path: Path, nano: Path, sig: signal.Signals) -> None:
    src = slow_input(tmp_path)
    (tmp_path / "o.tif").write_bytes(OLD)
    before = folder_state(tmp_path)
    proc = start_cli(src, tmp_path / "o.tif", nano)
    pid = stop_when_writing(proc, tmp_path, "o")
    os.kill(pid, sig)
    os.kill(pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert_one_line_error(subprocess.CompletedProcess([], proc.returncode, out, err), 130, "cancelled")
    assert folder_state(tmp_path) == before
    normal_run_works(tmp_path, nano, tmp_path / "o.tif")


def test_a_failed_run_never_touches_a_live_runs_files(tmp_path: Path, nano: Path) -> None:
    """Numbered cases 3 and 8: while run A writes o.tif, run B for the same output fails and
    run C succeeds; A's temporary file survives both, and A then finishes."""
    src = slow_input(tmp_path)
    a = start_cli(src, tmp_path / "o.tif", nano)
    pid = stop_when_writing(a, tmp_path, "o")
    try:
        live = parts(tmp_path)
        b = run_cli(src, tmp_path / "o.tif", "--weights", nano, "--device", "cpu", "--bands", "9")
        assert_one_line_error(b, 2, "does not exist")
        assert parts(tmp_path) == live
        upscale_raster(
            write_raster(tmp_path / "c.tif", random_rgb(64)), tmp_path / "o.tif", loaded(nano), OPTS
        )
        assert parts(tmp_path) == live
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = a.communicate(timeout=180)
    assert a.returncode == 0, err
    assert "wrote" in out and "Traceback" not in err
    assert parts(tmp_path) == []
    with rasterio.open(tmp_path / "o.tif") as dst:
        assert (dst.width, dst.height) == (1024, 1024)


# -- float and georeferencing edge cases ---------------------------------------------------------


def test_inf_pixels_stay_not_data(tmp_path: Path, nano: Path) -> None:
    data = random_rgb(64, dtype="float32")
    data[:, 10:20, 10:20] = np.inf
    data[1, 40, 40] = np.nan
    src = write_raster(tmp_path / "in.tif", data)
    before = folder_state(tmp_path)
    r = run_cli(src, tmp_path / "out.tif", "--weights", nano, "--device", "cpu", "--tile-size", 64)
    assert r.returncode == 0, r.stderr
    with rasterio.open(tmp_path / "out.tif") as dst:
        out = dst.read()
    assert np.isposinf(out[:, 40:80, 40:80]).all()
    assert np.isnan(out[:, 160:164, 160:164]).all()
    assert np.isfinite(out).sum() == out.size - 3 * 40 * 40 - 3 * 16
    assert folder_state(tmp_path).items() >= before.items()


def test_jpeg_without_georeferencing_gets_none(tmp_path: Path, nano: Path) -> None:
    src = write_raster(tmp_path / "photo.jpg", random_rgb(64), crs=None, driver="JPEG")
    r = run_cli(src, tmp_path / "out.tif", "--weights", nano, "--device", "cpu", "--tile-size", 64)
    assert r.returncode == 0, r.stderr
    assert "no georeferencing" in r.stdout
    assert "Traceback" not in r.stderr
    import warnings

    with warnings.catch_warnings(record=True) as caught, rasterio.open(tmp_path / "out.tif") as dst:
        warnings.simplefilter("always")
        assert dst.crs is None and dst.transform.is_identity and (dst.width, dst.height) == (256, 256)
    assert any("no geotransform" in str(w.message) for w in caught)


# -- through QGIS (qgis_process) -----------------------------------------------------------------


def qgis_popen(qgis, params: dict[str, object]) -> subprocess.Popen:
    from test_plugin_qgis import QGIS_PROCESS, _qgis_env

    args = [f"{k}={v}" for k, v in params.items()]
    return subprocess.Popen(
        [str(QGIS_PROCESS), "run", "slimdiffsr:upscale", "--", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_qgis_env(qgis.profile, qgis.plugins),
    )


def worker_of(parent: int) -> Callable[[], int]:
    """The backend worker started (through any depth of children) by process ``parent``."""

    def find() -> int:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        todo = [parent]
        while todo:
            pid = todo.pop()
            try:
                if b"backend.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                pass
            todo += children.get(pid, [])
        raise AssertionError("no worker process found")

    return find


def assert_qgis_failed_once(
    proc: subprocess.Popen | subprocess.CompletedProcess, out: str, err: str, pattern: str, echoes: int = 1
) -> None:
    """Failed, no traceback, and the one-line message matching ``pattern`` printed exactly
    ``echoes`` times in qgis_process's whole output: once for a problem found before the run
    (``checkParameterValues``); for a run's failure, as often as qgis_process prints any
    algorithm's exception (:func:`qgis_echoes`), i.e. the plugin adds no copy of its own
    (no feedback line, no log line from the worker)."""
    text = out + err
    assert proc.returncode != 0, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    found = re.search(rf"^(?:ERROR:\s*|\s*)(.*{pattern}.*)$", text, re.MULTILINE)
    assert found, text[-2000:]
    message = found[1].strip()
    assert text.count(message) == echoes, text[-3000:]


def data_files(state: dict[str, str]) -> dict[str, str]:
    """A folder state without the ``.aux.xml`` statistics QGIS itself saves beside a raster
    it loads as a layer (GDAL's side file; the raster is untouched)."""
    return {k: v for k, v in state.items() if not k.endswith(".aux.xml")}


@pytest.fixture(scope="module")
def qgis(tmp_path_factory: pytest.TempPathFactory):
    from test_plugin_qgis import QGIS_PROCESS, Qgis

    if not QGIS_PROCESS.exists():
        pytest.skip("QGIS is not installed (apt-get install qgis, or 'make install')")
    return Qgis(tmp_path_factory.mktemp("qgis"), ROOT)


@pytest.fixture(scope="module")
def qgis_echoes(qgis) -> int:
    """How many times qgis_process prints an exception raised by an algorithm, measured on
    QGIS's own ``native:raiseexception``: QGIS itself logs it as critical, reports it and
    logs the report (three lines in QGIS 3.22), whatever the algorithm; no plugin can
    change that without muting QGIS's log for everyone."""
    token = "qgis-echo-7f3a"
    proc = qgis_run(qgis, "native:raiseexception", {"MESSAGE": token})
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    return sum(token in line for line in lines if not line.startswith("MESSAGE:"))  # not the input echo


def qgis_run(qgis, algorithm: str, params: dict[str, object]) -> subprocess.CompletedProcess:
    """``qgis_process run`` with its plain-text output, as a user sees it in a terminal."""
    return qgis.process("run", algorithm, "--", *(f"{k}={v}" for k, v in params.items()), json_output=False)


@pytest.mark.qgis
@pytest.mark.parametrize(("overviews", "size"), [(0, "4m"), (1, "6m")], ids=["1-overviews-off", "2-default"])
def test_qgis_disk_fills_during_the_run(
    qgis, qgis_echoes: int, tmp_path: Path, tmpfs, nano: Path, overviews: int, size: str
) -> None:
    src = write_raster(tmp_path / "rgb256.tif", random_rgb(256))
    small = tmpfs("small", size)
    (small / "o.tif").write_bytes(OLD)
    before = folder_state(small, src)
    proc = qgis_popen(
        qgis,
        {
            "INPUT": src,
            "WEIGHTS": nano,
            "DEVICE": 1,
            "PRECISION": 1,
            "TILE_SIZE": 64,
            "OVERVIEWS": overviews,
            "OUTPUT": small / "o.tif",
        },
    )
    code, out, err = fill_while_stopped(proc, small, worker_of(proc.pid))
    assert_qgis_failed_once(proc, out, err, "No space left on device", qgis_echoes)
    (small / "fill").unlink()
    assert folder_state(small, src) == before
    normal_run_works(small, nano, small / "o.tif")


@pytest.mark.qgis
def test_qgis_failure_keeps_other_runs_files(qgis, qgis_echoes: int, tmp_path: Path, nano: Path) -> None:
    """Numbered case 3: a failed QGIS run removes neither a concurrent run's temporary file
    for the same output nor the files of another output whose name starts with ``out.``."""
    src = slow_input(tmp_path)
    foreign = tmp_path / ".out.v2.1a2b3c4d.part.tif"  # output out.v2.tif, written by someone else
    foreign.write_bytes(b"another output's data")
    a = start_cli(src, tmp_path / "out.tif", nano)
    pid = stop_when_writing(a, tmp_path, "out")
    try:
        live = parts(tmp_path)
        bad = tmp_path / "corrupt.safetensors"
        bad.write_bytes(b"\x00" * 100)
        proc = qgis_run(
            qgis,
            "slimdiffsr:upscale",
            {"INPUT": src, "WEIGHTS": bad, "DEVICE": 1, "PRECISION": 1, "OUTPUT": tmp_path / "out.tif"},
        )
        assert_qgis_failed_once(proc, proc.stdout, proc.stderr, "not a readable .safetensors", qgis_echoes)
        assert parts(tmp_path) == live and foreign.read_bytes() == b"another output's data"
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = a.communicate(timeout=180)
    assert a.returncode == 0 and "wrote" in out, err
    assert parts(tmp_path) == [foreign.name]


@pytest.mark.qgis
def test_qgis_nodata_out_of_range(qgis, tmp_path: Path, nano: Path) -> None:
    """Numbered case 5 through QGIS: found before the run from the layer's data type, in the
    engine's words (backend/nodata.py), so QGIS prints it once."""
    src = write_raster(tmp_path / "in.tif", random_rgb(64))
    before = folder_state(tmp_path)
    proc = qgis_run(
        qgis,
        "slimdiffsr:upscale",
        {
            "INPUT": src,
            "WEIGHTS": nano,
            "NODATA": 300,
            "DEVICE": 1,
            "PRECISION": 1,
            "OUTPUT": tmp_path / "out.tif",
        },
    )
    assert_qgis_failed_once(proc, proc.stdout, proc.stderr, r"nodata value 300 cannot occur .*0 to 255", 1)
    assert data_files(folder_state(tmp_path)) == before


@pytest.mark.qgis
def test_qgis_problem_seen_before_the_run_is_printed_once(qgis, tmp_path: Path) -> None:
    """A missing weights file needs no pixels: the plugin's parameter check reports it, and
    qgis_process prints that message once; no worker starts."""
    src = write_raster(tmp_path / "in.tif", random_rgb(64))
    before = folder_state(tmp_path)
    proc = qgis_run(
        qgis,
        "slimdiffsr:upscale",
        {"INPUT": src, "WEIGHTS": tmp_path / "nope.pt", "OUTPUT": tmp_path / "out.tif"},
    )
    assert_qgis_failed_once(proc, proc.stdout, proc.stderr, r"weights file not found: .*nope\.pt", 1)
    assert "backend python" not in proc.stdout  # decided before any worker started
    assert data_files(folder_state(tmp_path)) == before


@pytest.mark.qgis
def test_qgis_assess_all_nan_leaves_no_report(qgis, qgis_echoes: int, tmp_path: Path, nano: Path) -> None:
    """Numbered case 7."""
    src = write_raster(tmp_path / "nan.tif", np.full((3, 128, 128), np.nan, np.float32))
    before = folder_state(tmp_path)
    proc = qgis_run(
        qgis,
        "slimdiffsr:assess",
        {
            "INPUT": src,
            "WEIGHTS": nano,
            "DEVICE": 1,
            "PRECISION": 1,
            "OUTPUT_HTML": tmp_path / "r.html",
            "OUTPUT_PNG": tmp_path / "r.png",
        },
    )
    assert_qgis_failed_once(proc, proc.stdout, proc.stderr, r"nan\.tif has no valid pixel \(", qgis_echoes)
    assert data_files(folder_state(tmp_path)) == before
