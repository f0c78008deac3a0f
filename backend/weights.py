"""Loading and saving student weights without ever executing code from the file.

Two formats:

* the authors' release checkpoints (``net_params_4x.pkl``, ``net_params_8x.pkl``): a
  pickled state dict, keys with or without DataParallel's ``module.`` prefix, read with
  ``torch.load(weights_only=True)`` which refuses any object that would run code;
* our own ``.safetensors`` files (no pickle at all) whose metadata describes the file:
  architecture, scale, expected bands and value range, training summary, version.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from backend import __version__
from backend.errors import UserInputError, one_line
from backend.model import SlimDiffSRStudent, StudentConfig
from backend.model.degradation_estimator import DegradationEstimator, EstimatorConfig
from backend.regimes import RegimeExperts

FORMAT_NAME = "slimdiffsr-student"
FORMAT_VERSION = "1"
SUPPORTED_SCALES = (2, 4, 8)
RELEASE_SUFFIXES = (".pkl", ".pth", ".pt", ".ckpt", ".bin")


class WeightsError(UserInputError, ValueError):
    """A weight file that cannot be used; the message says what, why and what to do."""


MAX_CHECKPOINT_BYTES = 2 * 2**30
"""Largest content a release checkpoint may unpack to. The paper's student is 232 MB in
fp32; ``torch.save`` stores its zip entries uncompressed, so a file that expands far
beyond its size on disk (a zip bomb) is refused before anything is decompressed."""


def available_memory() -> int:
    """Bytes of memory the system can still give (MemAvailable), or a large number when
    the platform does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def build_student(config: StudentConfig, path: Path) -> SlimDiffSRStudent:
    """The student ``config`` describes, after checking that it can be built and fits in memory.

    The network is first laid out on torch's ``meta`` device (shapes only, no memory), so a
    declared architecture that is malformed or far too large is refused in one line instead
    of failing in a layer's constructor or in the allocator.
    """
    try:
        with torch.device("meta"):
            skeleton = SlimDiffSRStudent(config)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise WeightsError(
            f"{path.name}: the architecture in its metadata cannot be built ({one_line(exc, 120)}); the file "
            "is damaged or was not written by this tool"
        ) from None
    needed = sum(t.numel() * t.element_size() for t in skeleton.state_dict().values())
    free = available_memory()
    if needed * 2 > free:  # the tensors read from the file, and the network they are copied into
        raise WeightsError(
            f"{path.name} declares a network of {_size(needed)} and only {_size(free)} of memory is free; "
            "the file's metadata is wrong, or use a machine with more memory"
        )
    return skeleton


@dataclass
class LoadedWeights:
    model: SlimDiffSRStudent
    scale: int
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    experts: RegimeExperts | None = None
    """Degradation-aware files: the experts per LR regime and their estimator
    (:mod:`backend.regimes`); None: one network for every input."""

    @property
    def color_match(self) -> bool:
        """Whether outputs get the release's per-channel colour match to the bicubic input.

        The release's students need it (their raw output drifts in colour); a model trained
        to output the image directly records ``color_match: false``, since matching its std
        to the blurrier bicubic input would flatten the detail it restores.
        """
        return str(self.metadata.get("color_match", "true")).lower() not in ("false", "0", "no")

    @property
    def lr_consistency(self) -> bool:
        """Whether outputs get one back-projection step towards the input (``lr_consistency``).

        Off unless the file says so: the release's students were not evaluated with it, and
        it assumes the antialiased bicubic degradation our models are trained and judged on.
        """
        return str(self.metadata.get("lr_consistency", "false")).lower() in ("true", "1", "yes")

    @property
    def receptive_margin(self) -> int | None:
        """Output pixels into a tile that still see beyond its edge, measured on this model
        (``receptive_margin``, measured by devtools/margin.py); None when not recorded."""
        try:
            value = int(self.metadata["receptive_margin"])
        except (KeyError, TypeError, ValueError):
            return None
        return value if value >= 0 else None

    @property
    def description(self) -> str:
        name = self.metadata.get("name") or Path(self.source).name
        return f"{name} (x{self.scale})"


def default_weights_path(scale: int = 4) -> Path:
    """The bundled default model shipped in ``resources/weights`` for ``scale``."""
    folder = Path(__file__).resolve().parent.parent / "resources" / "weights"
    path = folder / f"slimdiffsr_default_x{scale}.safetensors"
    if not path.is_file():
        raise WeightsError(
            f"no bundled default model for x{scale} ({path.name} is missing); choose a weights file "
            "or reinstall the plugin"
        )
    return path


def scale_from_filename(path: str | Path) -> int | None:
    """The release names its files ``..._4x.pkl`` / ``..._8x.pkl``."""
    found = {int(m) for m in re.findall(r"(?<![0-9])([248])x(?![0-9a-z])", Path(path).stem.lower())}
    found |= {int(m) for m in re.findall(r"(?<![0-9a-z])x([248])(?![0-9])", Path(path).stem.lower())}
    return found.pop() if len(found) == 1 else None


def _resolve_scale(declared: int | None, origin: str, requested: int | None, path: Path) -> int:
    if declared is not None and requested is not None and declared != requested:
        raise WeightsError(
            f"{path.name}: the weights are for x{declared} ({origin}) but x{requested} was requested; "
            f"use scale {declared} or weights trained for x{requested}"
        )
    scale = declared if declared is not None else requested
    if scale is None:
        raise WeightsError(
            f"{path.name}: the scale is not recorded in the file or its name; give it explicitly (4 or 8)"
        )
    if scale not in SUPPORTED_SCALES:
        raise WeightsError(f"scale x{scale} is not supported; use one of {SUPPORTED_SCALES}")
    return scale


def _check_state_dict(model: SlimDiffSRStudent, state: dict[str, torch.Tensor], path: Path) -> None:
    """Report missing, unexpected and mis-shaped tensors by name before loading."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise WeightsError(
            f"{path.name} does not match the SlimDiffSR student architecture: {'; '.join(problems)}. "
            "Use a SlimDiffSR release checkpoint or a .safetensors file written by this tool"
        )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "params", "model", "net"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path.name} holds no state dict of tensors; it is not a SlimDiffSR checkpoint")
    prefix = "module."
    if all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def _check_unpacked_size(path: Path) -> None:
    """Refuse a zip checkpoint whose entries would unpack to more than
    :data:`MAX_CHECKPOINT_BYTES` or than half the free memory, before torch reads it."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(max(0, info.file_size) for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load reports a damaged file with its own reason
    limit = min(MAX_CHECKPOINT_BYTES, available_memory() // 2)
    if total > limit:
        raise WeightsError(
            f"{path.name} was refused: it would unpack to {_size(total)} "
            f"({_size(path.stat().st_size)} on disk), "
            f"more than the {_size(limit)} a SlimDiffSR checkpoint may take; it is not a SlimDiffSR "
            "checkpoint (the release's are about 232 MB). Nothing was unpacked"
        )


def read_release_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a release checkpoint safely: no pickled code is ever executed."""
    path = Path(path)
    _check_unpacked_size(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path.name} was refused: it contains pickled code or objects other than tensors "
            f"({str(exc).splitlines()[0][:120]}). Only load checkpoints from sources you trust; "
            "nothing from the file was executed"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WeightsError(
            f"{path.name} could not be read as a checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}); the file may be truncated "
            "or corrupt: download it again"
        ) from None
    return _unwrap(obj, path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(
            f"{path.name} is not a readable .safetensors file ({str(exc)[:120]}); it may be truncated: "
            "copy or download it again"
        ) from None
    return state, meta


def load_weights(path: str | Path, scale: int | None = None) -> LoadedWeights:
    """Build the student described by ``path`` and load its weights strictly.

    The scale comes from the file's metadata, else from the release's file name, else from
    ``scale``; a disagreement between them is an error, never a silent wrong result.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; check the path")
    if path.suffix.lower() == ".safetensors":
        state, meta = _read_safetensors(path)
        if meta.get("format") != FORMAT_NAME or "architecture" not in meta:
            raise WeightsError(
                f"{path.name} has no SlimDiffSR metadata (format/architecture); "
                "convert release checkpoints with 'python -m backend.cli convert'"
            )
        try:
            config = StudentConfig.from_json(meta["architecture"])
        except (ValueError, TypeError, AttributeError) as exc:
            raise WeightsError(
                f"{path.name}: invalid architecture metadata ({one_line(exc, 160)}); the file is damaged or "
                "was not written by this tool"
            ) from None
        try:
            declared = int(meta["scale"]) if meta.get("scale") else None
        except ValueError:
            raise WeightsError(
                f"{path.name}: its metadata gives the scale as {meta['scale'][:20]!r}, not a number; the "
                "file is damaged or was not written by this tool"
            ) from None
        chosen = _resolve_scale(declared, "file metadata", scale, path)
        metadata: dict[str, Any] = {k: _maybe_json(v) for k, v in meta.items()}
    elif path.suffix.lower() in RELEASE_SUFFIXES:
        state = read_release_state_dict(path)
        config = StudentConfig()
        chosen = _resolve_scale(scale_from_filename(path), "file name", scale, path)
        metadata = {"name": path.stem, "origin": "SlimDiffSR release checkpoint"}
    else:
        raise WeightsError(
            f"{path.name}: unknown weights format '{path.suffix}'; use .safetensors or a release .pkl/.pth"
        )
    experts_state = {k: state.pop(k) for k in [k for k in state if k.startswith(("regime.", "estimator."))]}
    skeleton = build_student(config, path)
    _check_state_dict(skeleton, state, path)
    model = SlimDiffSRStudent(config)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    experts = _read_experts(skeleton, state, experts_state, metadata, path) if experts_state else None
    return LoadedWeights(model=model, scale=chosen, metadata=metadata, source=str(path), experts=experts)


def _read_experts(
    skeleton: SlimDiffSRStudent,
    base: dict[str, torch.Tensor],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    path: Path,
) -> RegimeExperts:
    """The ``regime.<name>.`` and ``estimator.`` tensors -> :class:`RegimeExperts`, every
    expert checked against the architecture as the file's own network is."""
    names = metadata.get("regimes")
    try:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) < 2:
            raise ValueError("'regimes' must list the file's own regime and at least one expert")
        config = EstimatorConfig.from_dict(metadata.get("estimator") or {})
        if set(config.regimes) != set(names):
            raise ValueError("the estimator's regimes differ from the file's")
    except (ValueError, TypeError, KeyError) as exc:
        raise WeightsError(
            f"{path.name}: invalid regime metadata ({one_line(exc, 120)}); the file is damaged or was not "
            "written by this tool"
        ) from None
    states = {names[0]: base}
    for name in names[1:]:
        prefix = f"regime.{name}."
        states[name] = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        _check_state_dict(skeleton, states[name], path)
    estimator = DegradationEstimator(config)
    prefix = "estimator."
    estimator_state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    leftover = (
        set(tensors)
        - {f"regime.{n}.{k}" for n in names[1:] for k in states[n]}
        - {prefix + k for k in estimator_state}
    )
    try:
        if leftover:
            raise ValueError(f"tensors of no regime: {', '.join(sorted(leftover)[:3])}")
        estimator.load_state_dict(estimator_state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise WeightsError(
            f"{path.name}: its degradation estimator does not load ({one_line(exc, 120)}); the file is "
            "damaged or was not written by this tool"
        ) from None
    return RegimeExperts(tuple(names), states, estimator.eval().requires_grad_(False))


def _maybe_json(value: str) -> Any:
    if value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def save_safetensors(
    model: SlimDiffSRStudent,
    path: str | Path,
    scale: int,
    *,
    name: str = "",
    input_bands: str = "RGB",
    value_range: tuple[float, float] = (0.0, 1.0),
    training: dict[str, Any] | None = None,
    color_match: bool = True,
    lr_consistency: bool = False,
    extra: dict[str, Any] | None = None,
    experts: RegimeExperts | None = None,
) -> Path:
    """Write weights plus the metadata that makes the file self-describing; with
    ``experts``, ``model`` is the first regime's network and the others and the estimator
    are stored beside it (:mod:`backend.regimes`)."""
    from safetensors.torch import save_file

    if scale not in SUPPORTED_SCALES:
        raise WeightsError(f"scale x{scale} is not supported; use one of {SUPPORTED_SCALES}")
    path = Path(path)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "writer_version": __version__,
        "name": name or path.stem,
        "architecture": model.config.to_json(),
        "scale": str(scale),
        "input_bands": input_bands,
        "value_range": json.dumps(list(value_range)),
        "training": json.dumps(training or {}),
        "color_match": "true" if color_match else "false",
        "lr_consistency": "true" if lr_consistency else "false",
    }
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if experts is not None:
        meta["regimes"] = json.dumps(list(experts.names))
        meta["estimator"] = json.dumps(experts.estimator.config.to_dict())
        for name in experts.names[1:]:
            for k, v in experts.states[name].items():
                state[f"regime.{name}.{k}"] = v.detach().cpu().contiguous()
        for k, v in experts.estimator.state_dict().items():
            state[f"estimator.{k}"] = v.detach().cpu().contiguous()
    tmp = path.with_name(path.name + ".part")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def convert_release(src: str | Path, dst: str | Path, scale: int | None = None) -> Path:
    """Release ``.pkl`` -> our ``.safetensors`` with metadata (scale from name or argument)."""
    loaded = load_weights(src, scale=scale)
    return save_safetensors(
        loaded.model,
        dst,
        loaded.scale,
        name=Path(src).stem,
        training={"origin": "SlimDiffSR authors' release", "source_file": Path(src).name},
    )
