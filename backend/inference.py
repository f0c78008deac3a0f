"""Running the student on images: device, precision, the release's pre/post-processing.

The release's test pipeline, reproduced by :meth:`SuperResolver.super_resolve`:
LR in [0,1] -> *2-1 -> bicubic x s -> reflect-pad bottom/right to a multiple of 256 ->
student -> crop -> per-channel colour match
``sr = (sr - mean(sr)) / std(sr) * std(up) + mean(up)`` (``up`` = the padded bicubic
input) -> /2 + 0.5 -> clamp to [0, 1].

Weights that record ``lr_consistency: true`` (our default models) get one back-projection
step towards the input right after the network (:mod:`backend.model.lr_consistency`),
before any colour match.

The colour-match statistics are an input (:class:`ColorStats`): one image computes its
own, a tiled raster passes global ones so every tile is mapped the same way. The same
holds inside the network: :meth:`SuperResolver.record_statistics` gathers the statistics
of its global operations over a whole image once (:mod:`backend.model.global_context`),
and :meth:`SuperResolver.restore` runs tiles with them, so the tile size does not change
the picture.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backend.errors import UserInputError, one_line
from backend.model import SlimDiffSRStudent
from backend.model.fused_student import FusedStudent
from backend.model.global_context import GlobalContext, GlobalStatistics
from backend.model.lr_consistency import enforce_lr_consistency, enlarge, enlarge_sparse
from backend.regimes import Mixture, RegimeExperts, describe_mixture
from backend.runtime.choices import PRECISIONS, RUNTIMES
from backend.runtime.cpu import cpu_info
from backend.weights import LoadedWeights

if TYPE_CHECKING:
    from pathlib import Path

    from backend.runtime.cpu_path import CpuRuntimePath

NetworkFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""(network input [B, C, H, W], frozen global statistics [B, size] or None) -> image."""
RELEASE_PAD_MULTIPLE = 256
# Reduced precision is accepted when its relative L2 error against fp32 stays below this.
AUTO_PRECISION_TOLERANCE = 0.01
# ... and int8 only when, in addition, its output is this close to fp32's on real imagery
# (PSNR in dB, values in [0, 1]): an error at 50 dB moves a 30 dB result by under 0.05 dB.
AUTO_INT8_MIN_PSNR = 50.0
REGIME_CACHE = 3
"""Resolvers of other expert mixtures a resolver keeps (:meth:`SuperResolver.for_regime`)."""


class InferenceError(UserInputError, RuntimeError):
    """A device or precision request that cannot be honoured, in one line."""


@dataclass(frozen=True)
class ColorStats:
    """Per-channel colour-match statistics in model space ([-1, 1]).

    ``sr_*`` describe the raw network output, ``ref_*`` the bicubic input it is mapped to.
    """

    sr_mean: np.ndarray
    sr_std: np.ndarray
    ref_mean: np.ndarray
    ref_std: np.ndarray

    def apply(self, sr: torch.Tensor) -> torch.Tensor:
        """sr: [B, C, H, W] float32 -> colour-matched, same shape."""

        def col(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float32), device=sr.device).view(1, -1, 1, 1)

        std = torch.clamp(col(self.sr_std), min=1e-6)
        return (sr - col(self.sr_mean)) / std * col(self.ref_std) + col(self.ref_mean)


def image_stats(sr: torch.Tensor, ref: torch.Tensor) -> ColorStats:
    """Per-image statistics as the release computes them (unbiased std, one image)."""
    return ColorStats(
        sr_mean=sr.mean(dim=(0, 2, 3)).cpu().numpy(),
        sr_std=sr.std(dim=(0, 2, 3)).cpu().numpy(),
        ref_mean=ref.mean(dim=(0, 2, 3)).cpu().numpy(),
        ref_std=ref.std(dim=(0, 2, 3)).cpu().numpy(),
    )


def reflect_pad(x: torch.Tensor, bottom: int, right: int) -> torch.Tensor:
    """Reflect-pad bottom/right; pads larger than the image are done in several steps.

    torch refuses a reflect pad >= the dimension (the release crashes on small images);
    repeating the reflection continues the mirror pattern instead.
    """
    while bottom > 0 or right > 0:
        pb = min(bottom, x.shape[-2] - 1)
        pr = min(right, x.shape[-1] - 1)
        if pb == 0 and pr == 0:  # a 1-pixel dimension cannot be reflected: replicate it
            return F.pad(x, (0, right, 0, bottom), mode="replicate")
        x = F.pad(x, (0, pr, 0, pb), mode="reflect")
        bottom -= pb
        right -= pr
    return x


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _channels_last(module: ModuleT) -> ModuleT:
    """``module`` with its 4-D weights in the channels-last layout the CPU and cuDNN
    convolutions prefer. ``Module.to`` takes ``memory_format`` at run time, but its type
    stubs do not list it."""
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def resolve_device(device: str = "auto") -> torch.device:
    """auto -> cuda:0 when usable, else cpu; an unavailable request is an error."""
    if device in ("auto", "", None):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InferenceError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InferenceError(
                "device 'cuda' was requested but torch sees no CUDA GPU (CPU-only torch build or no "
                "driver); use device 'cpu' or install the CUDA build of torch (README: GPU setup)"
            )
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise InferenceError(f"cuda:{index} does not exist; {torch.cuda.device_count()} GPU(s) visible")
        dev = torch.device("cuda", index)
    elif dev.type != "cpu":
        raise InferenceError(f"unsupported device '{device}'; use auto, cpu or cuda[:N]")
    return dev


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 math (AVX512-BF16 / AMX), where bf16 beats fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def describe_device(device: torch.device) -> str:
    """'cuda:0 NAME' or 'cpu (ISA)', the CPU's widest vector ISA (avx2, avx512, amx)."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0} {torch.cuda.get_device_name(device)}"
    return f"cpu ({cpu_info().isa})"


def probe_errors(test: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative L2 of the centred outputs, PSNR in dB of [0, 1] images) of ``test`` against
    ``ref``, both network outputs in [-1, 1]."""
    a, b = test.float() - test.float().mean(), ref.float() - ref.float().mean()
    rel = float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp(min=1e-12))
    mse = float(((test.float() - ref.float()).clamp(-2, 2) / 2).pow(2).mean())
    psnr = 10 * float(np.log10(1 / mse)) if mse > 0 else 100.0
    return rel, psnr


def _run_together(
    network: Callable[..., torch.Tensor], images: Sequence[torch.Tensor], statistics: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``network`` on each of ``images`` ([1, C, H, W]) with its own ``statistics`` ([1, size]):
    as one batch when they share a size (a CPU runtime then runs them side by side), else
    one by one."""
    if len({tuple(x.shape) for x in images}) == 1:
        return list(network(torch.cat(list(images)), torch.cat(list(statistics))).split(1))
    return [network(x, r) for x, r in zip(images, statistics, strict=True)]


class SuperResolver:
    """A loaded student on a device at a precision, with the release's processing.

    ``precision='auto'`` tries the fastest reduced precision of the device (fp16 on CUDA,
    bf16 on CPUs with native bf16) on a probe image and keeps it only if its relative L2
    error against fp32 stays under 1 %; otherwise fp32. On CPUs without native bf16 (AVX2
    laptops and servers, where emulated bf16 is slower than fp32) it runs the network in a
    CPU inference runtime (``runtime``: OpenVINO first, then ONNX Runtime, when installed),
    checked against torch fp32 on the probe; where the CPU has int8 dot products (VNNI,
    AMX; ``auto_int8``; elsewhere on large rasters, :meth:`for_calibration`),
    :meth:`calibrate` on real imagery then switches to int8 if the int8 network stays
    within ``AUTO_INT8_MIN_PSNR`` of fp32 on it. ``precision='int8'``
    takes the int8 network after calibration whatever its error.
    ``precision='fp32'`` (and ``runtime='torch'``) is torch, the reference.
    """

    def __init__(
        self,
        model: SlimDiffSRStudent,
        scale: int,
        device: str = "auto",
        precision: str = "auto",
        *,
        channels_last: bool = True,
        compile: bool = False,
        color_match: bool = True,
        lr_consistency: bool = False,
        receptive_margin: int | None = None,
        runtime: str = "auto",
        auto_int8: bool | None = None,
        experts: RegimeExperts | None = None,
        regime: Mixture | None = None,
        name: str | None = None,
        checked_runtime: str | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise InferenceError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
        if runtime not in RUNTIMES:
            raise InferenceError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}")
        self.scale = int(scale)
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.model = model.eval().requires_grad_(False).to(self.device)
        if channels_last:
            self.model = _channels_last(self.model)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.compile = compile
        self.color_match = color_match
        self.lr_consistency = lr_consistency
        # Measured output pixels of context a tile edge affects (weights metadata); the
        # engine's default overlap follows it.
        self.receptive_margin = receptive_margin
        self.multiple = model.config.downscale
        self.probe_error: float | None = None
        self.probe_psnr: float | None = None
        # The CPU runtime path (backend.runtime), when one runs the network; None: torch.
        self.runtime: str = "torch"
        self._cpu_path: CpuRuntimePath | None = None
        self._recorder: FusedStudent | None = None
        self._calibrate = False
        self._wanted = precision
        self._runtime_wanted = runtime
        # Degradation-aware weights: the experts, and the mixture this resolver runs
        # (None: the file's own network); :meth:`for_regime` builds the others, kept
        # in ``_by_regime`` (a raster batch mostly repeats a few).
        self.experts = experts
        self.regime = regime
        # The weights' own description (reports, the output's SLIMDIFFSR_MODEL tag).
        self.name = name
        self._by_regime: dict[Mixture, SuperResolver] = {}
        self._regime_lock = threading.Lock()
        # Whether 'auto' calibrates an int8 candidate: by default where the CPU has int8
        # dot products (cpu_info().fast_int8); elsewhere it costs more than it saves.
        self._auto_int8 = cpu_info().fast_int8 if auto_int8 is None else auto_int8
        # A CPU runtime whose probe another resolver of the same architecture passed (a
        # mixture of the experts of this one's file): taken without probing again.
        self._checked_runtime = checked_runtime
        self.precision, network = self._choose_precision(precision, runtime)
        # The probe already built the chosen network (a bf16 copy of the weights on the
        # CPU); reuse it rather than copying the model a second time.
        self._network = network or self._prepare(self.precision)

    @classmethod
    def from_weights(
        cls, loaded: LoadedWeights, device: str = "auto", precision: str = "auto", runtime: str = "auto"
    ) -> SuperResolver:
        """A resolver configured as the weight file says (scale, colour match, LR consistency,
        receptive margin)."""
        return cls(
            loaded.model,
            loaded.scale,
            device,
            precision,
            color_match=loaded.color_match,
            lr_consistency=loaded.lr_consistency,
            receptive_margin=loaded.receptive_margin,
            runtime=runtime,
            experts=loaded.experts,
            name=loaded.description,
        )

    # -- degradation-aware weights -------------------------------------------------------
    def estimate_regime(self, crops: torch.Tensor | np.ndarray) -> Mixture | None:
        """Crops [K, 3, h, w] in [0, 1] of one raster (:func:`backend.regimes.crop_positions`)
        -> the experts' mixture for it; None when the weights have no experts."""
        return None if self.experts is None else self.experts.estimate(crops)

    def for_regime(self, mixture: Mixture | None) -> SuperResolver:
        """This resolver with the experts' weights mixed as ``mixture`` (same device,
        precision wish and runtime); itself when there are no experts or no mixture.

        Kept for reuse: the last ``REGIME_CACHE`` mixtures' resolvers (each a copy of the
        small network, and its CPU-runtime build).
        """
        if self.experts is None or mixture is None or mixture == self.regime:
            return self
        if self.regime is None and mixture == ((self.experts.names[0], 1.0),):
            return self  # the file's own network
        with self._regime_lock:
            cached = self._by_regime.pop(mixture, None)
            if cached is None:
                model = copy.deepcopy(self.model)
                model.load_state_dict(self.experts.mix(mixture))
                cached = SuperResolver(
                    model,
                    self.scale,
                    str(self.device),
                    self._wanted,
                    channels_last=self.channels_last,
                    compile=self.compile,
                    color_match=self.color_match,
                    lr_consistency=self.lr_consistency,
                    receptive_margin=self.receptive_margin,
                    runtime=self._runtime_wanted,
                    auto_int8=self._auto_int8,
                    regime=mixture,
                    name=self.name,
                    checked_runtime=None if self._cpu_path is None else self.runtime,
                )
            self._by_regime[mixture] = cached  # most recent last
            while len(self._by_regime) > REGIME_CACHE:
                self._by_regime.pop(next(iter(self._by_regime)))
            return cached

    # -- precision ---------------------------------------------------------------------
    def _check_supported(self, precision: str) -> None:
        if precision == "fp16" and self.device.type == "cpu":
            raise InferenceError("fp16 is not supported on the CPU; use bf16, fp32 or auto")
        if precision == "int8" and self.device.type != "cpu":
            raise InferenceError("int8 runs on the CPU only; use fp16, bf16, fp32 or auto on a GPU")
        if precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InferenceError("this GPU has no bf16 support; use fp16, fp32 or auto")

    def _prepare(self, precision: str) -> NetworkFn:
        """A function image -> image running the network at ``precision``.

        On the CPU, bf16 runs with bf16 weights (measured 1.25x faster than autocast, which
        re-casts every weight on every call, at the same error). On CUDA, reduced precision
        uses autocast, which keeps normalisations and reductions in fp32.
        """
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        cast_weights = dtype is not None and self.device.type == "cpu"
        # Fused before any cast, so the composed kernels come from the fp32 weights.
        model: nn.Module = FusedStudent(copy.deepcopy(self.model) if cast_weights else self.model)
        if cast_weights:
            model = model.to(dtype)
        if self.channels_last:
            model = _channels_last(model)
        forward: Callable[..., tuple[torch.Tensor, torch.Tensor]] = (
            torch.compile(model) if self.compile else model
        )

        def run(x: torch.Tensor, context: GlobalContext | None) -> torch.Tensor:
            if cast_weights:
                return forward(x.to(dtype), context)[1].float()
            if dtype is None:
                return forward(x, context)[1].float()
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                return forward(x, context)[1].float()

        def network(x: torch.Tensor, statistics: torch.Tensor | None) -> torch.Tensor:
            if statistics is None:
                return run(x, None)
            context = GlobalContext.frozen(statistics.to(x.device))
            out = run(x, context)
            context.check_consumed()
            return out

        return network

    def _probe_image(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        size = max(self.multiple, 64)
        probe = torch.rand(1, self.model.config.image_channels, size, size, generator=generator) * 2 - 1
        return F.avg_pool2d(probe, 5, 1, 2)  # image-like: smoother than white noise

    def _choose_precision(self, precision: str, runtime: str = "auto") -> tuple[str, NetworkFn | None]:
        """The precision to use, and its network when the probe built it."""
        if precision != "auto":
            self._check_supported(precision)
        if self.device.type == "cpu" and (
            precision == "int8"
            or (precision == "auto" and not cpu_has_fast_bf16())
            or (precision == "fp32" and runtime not in ("auto", "torch"))
        ):
            network = self._cpu_runtime(runtime, required=precision == "int8" or runtime != "auto")
            if network is not None:
                self._calibrate = precision == "int8" or (precision == "auto" and self._auto_int8)
                return "fp32", network
            if precision == "int8":
                raise InferenceError(
                    "int8 needs OpenVINO or ONNX Runtime; reinstall the backend (make install)"
                )
        if precision != "auto":
            return precision, None
        if self.device.type == "cuda":
            candidate = "fp16"
        elif cpu_has_fast_bf16():
            candidate = "bf16"
        else:
            return "fp32", None
        probe = self._probe_image()
        with torch.inference_mode():
            reference = self._prepare("fp32")
            network = self._prepare(candidate)
            ref = reference(self._to_device(probe), None)
            test = network(self._to_device(probe), None)
        err, self.probe_psnr = probe_errors(test, ref)
        self.probe_error = err
        if np.isfinite(err) and err < AUTO_PRECISION_TOLERANCE:
            return candidate, network
        return "fp32", reference

    def _cpu_runtime(self, runtime: str, required: bool) -> NetworkFn | None:
        """The fp32 network in a CPU runtime if one is installed and agrees with torch fp32 on
        the probe (else None, or an error when ``required``)."""
        from backend.runtime.cpu_path import CpuRuntimePath, pick_runtime

        try:
            name = pick_runtime(runtime)
            if name is None:
                return None
            path = CpuRuntimePath(self.model, name)
            if name == self._checked_runtime:  # same graph, other weights: no new probe
                self.runtime, self._cpu_path = name, path
                return path.fp32
            probe = self._probe_image()
            with torch.inference_mode():
                test = path.fp32(probe, None)  # exports and compiles the graph
                ref = self._prepare("fp32")(self._to_device(probe), None)
        except (ModuleNotFoundError, ImportError, OSError, RuntimeError) as exc:
            if required:
                raise InferenceError(
                    f"the {runtime} runtime cannot run this network ({one_line(exc)})"
                ) from None
            return None
        err, psnr = probe_errors(test, ref)
        self.probe_error, self.probe_psnr = err, psnr
        if not (np.isfinite(err) and err < AUTO_PRECISION_TOLERANCE) and not required:
            return None
        self.runtime, self._cpu_path = name, path
        return path.fp32

    def for_calibration(self, large: bool = True) -> SuperResolver | None:
        """A copy of this resolver whose int8 network waits for :meth:`calibrate` on one
        raster, or None where int8 is no candidate: a precision other than 'auto'/'int8',
        torch running the network, int8 already in use, or 'auto' on a CPU without int8
        dot products for a raster not ``large`` enough to repay the calibration (the engine
        decides, :mod:`backend.engine.calibration`).

        The copy shares the model and the compiled graphs; its precision and network are its
        own, so the resolver a batch or a worker's threads share never changes under another
        raster, and each raster gets int8 ranges measured on itself.
        """
        if self._cpu_path is None or self.precision != "fp32":
            return None
        if not (self._wanted == "int8" or (self._wanted == "auto" and (self._auto_int8 or large))):
            return None
        twin = copy.copy(self)
        twin._calibrate = True
        return twin

    @property
    def needs_calibration(self) -> bool:
        """Whether :meth:`calibrate` would still change anything (an int8 candidate waits)."""
        return self._calibrate and self._cpu_path is not None

    def calibrate(self, images: Sequence[np.ndarray], tiled: bool = False) -> bool:
        """Calibrate int8 on real low-resolution images (HxWxC in [0, 1]) and switch to it
        when the precision allows: always for 'int8', for 'auto' only if the int8 output on
        these images stays within ``AUTO_PRECISION_TOLERANCE`` and ``AUTO_INT8_MIN_PSNR``
        of torch fp32. Returns whether int8 is now in use; a no-op on other paths.

        ``tiled``: the caller runs tiles with shared statistics (the engine on a raster of
        several windows), so the probe runs the int8 graph that takes them, each image with
        its own statistics (the same function as the plain graph), and the plain graph is
        never built; else the plain one, as whole images run.
        """
        if not self._calibrate or self._cpu_path is None or not images:
            return self.precision == "int8"
        inputs = []
        for lr in images:
            x = torch.from_numpy(np.ascontiguousarray(np.asarray(lr, np.float32).transpose(2, 0, 1)))[None]
            up = self.upsample(x * 2 - 1)
            h, w = up.shape[-2:]
            inputs.append(reflect_pad(up, (-h) % self.multiple, (-w) % self.multiple))
        try:
            int8, reference = self._cpu_path.int8(inputs)
            with torch.inference_mode():
                if tiled:  # side by side, as the tiles will run
                    statistics = [self._cpu_path.record(x) for x in inputs]
                    outputs = _run_together(int8, inputs, statistics)
                else:  # one by one, as whole images run (the build they will use)
                    outputs = [int8(x, None) for x in inputs]
                test = torch.cat([t.flatten() for t in outputs])
        except (ValueError, RuntimeError, ImportError, OSError) as exc:  # OSError: a graph's export
            if self._wanted == "int8":
                raise InferenceError(f"int8 calibration failed ({one_line(exc)})") from None
            return False
        err, psnr = probe_errors(test, torch.cat([r.flatten() for r in reference]))
        self.probe_error, self.probe_psnr = err, psnr
        self._calibrate = False
        if self._wanted == "int8" or (
            np.isfinite(err) and err < AUTO_PRECISION_TOLERANCE and psnr >= AUTO_INT8_MIN_PSNR
        ):
            self.precision, self._network = "int8", int8
            return True
        return False

    def prepare_graphs(self) -> list[Path]:
        """Export the CPU runtime's graphs of this network ahead of the first raster (the
        plugin's setup does it for the bundled models): a raster then only compiles them,
        and every expert mixture of these weights gets its graphs without a trace. Returns
        the graph files; none where torch runs the network (GPU, bf16 CPUs, no runtime)."""
        if self._cpu_path is None:
            return []
        with self._runtime_errors():
            return self._cpu_path.export_graphs()

    @property
    def parallel_tiles(self) -> int:
        """Tiles the network runs side by side in one batch (the CPU runtime's streams; 1
        for torch): the engine's default batch size on the CPU."""
        return self._cpu_path.streams if self._cpu_path is not None else 1

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @property
    def description(self) -> str:
        """'cpu (avx2), openvino int8', 'cpu (avx2), fp32' (torch), 'cuda:0 NAME, fp16'."""
        runtime = "" if self.runtime == "torch" else f"{self.runtime} "
        return f"{describe_device(self.device)}, {runtime}{self.precision}"

    @property
    def title(self) -> str:
        """The model as reports and the output's tag name it: the weights' description, and
        for degradation-aware weights the expert mixture it runs."""
        name = self.name or f"SlimDiffSR student (x{self.scale})"
        return f"{name}, {self.regime_description}" if self.regime_description else name

    @property
    def regime_description(self) -> str:
        """'' (one network), or 'for soft imagery (soft 0.8, clean 0.2)'."""
        if self.regime is None:
            return "" if self.experts is None else f"for {self.experts.names[0]} imagery"
        return describe_mixture(self.regime)

    # -- the network -------------------------------------------------------------------
    def _check_multiple(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise InferenceError(f"network input {h}x{w} is not a multiple of {self.multiple}")

    @torch.inference_mode()
    def run_network(self, up: torch.Tensor, statistics: GlobalStatistics | None = None) -> torch.Tensor:
        """Network on a batch whose size is already a multiple of ``self.multiple``.

        up: [B, C, H, W] in [-1, 1] (any device) -> float32 [B, C, H, W] on ``self.device``.
        ``statistics``: the global statistics of the images the batch is cut from
        (:meth:`record_statistics`; B a multiple of their images, tile-major); None: each
        item's own, as the release.
        """
        self._check_multiple(up)
        rows = None
        if statistics is not None:
            if up.shape[0] % statistics.images:
                raise InferenceError(
                    f"a batch of {up.shape[0]} does not split into tiles of {statistics.images} images"
                )
            rows = statistics.for_batch(up.shape[0] // statistics.images)
        with self._runtime_errors():
            return self._network(self._to_device(up.float()), rows)

    @contextlib.contextmanager
    def _runtime_errors(self) -> Iterator[None]:
        """A CPU runtime exports, quantizes and compiles each graph on first use: what goes
        wrong there is a one-line error (a full or read-only disk is the user's to fix)."""
        try:
            yield
        except OSError as exc:
            if self._cpu_path is None:
                raise
            raise InferenceError(
                f"cannot write the network's {self.runtime} graph ({one_line(exc)}); free disk space "
                "or set SLIMDIFFSR_CACHE to a writable folder"
            ) from None
        except (RuntimeError, ValueError) as exc:
            if self._cpu_path is None:
                raise
            raise InferenceError(
                f"the {self.runtime} runtime failed on this network ({one_line(exc)}); "
                "use precision fp32, which runs it in torch"
            ) from None

    @torch.inference_mode()
    def record_statistics(self, up: torch.Tensor, joint: bool = False) -> GlobalStatistics:
        """The global statistics of the images in ``up`` for :meth:`run_network`.

        up: [B, C, H, W] network inputs in [-1, 1], sizes a multiple of ``self.multiple``;
        with ``joint`` they are crops of one image, whose statistics are gathered together
        (one row). Recorded in fp32 (whichever precision then runs the tiles), in the CPU
        runtime when one runs the network, else by torch on this resolver's device: one
        pass without the decoder.
        """
        self._check_multiple(up)
        if self._cpu_path is not None and (joint or up.shape[0] == 1):
            with self._runtime_errors():
                return GlobalStatistics(self._cpu_path.record(up.float()))
        if self._recorder is None:
            self._recorder = FusedStudent(self.model)
        return GlobalStatistics(self._recorder.record(self._to_device(up.float()), joint).values.cpu())

    @torch.inference_mode()
    def upsample(self, lr: torch.Tensor) -> torch.Tensor:
        """Bicubic x scale (torch's a=-0.75, align_corners=False, as the release)."""
        return enlarge(lr.float(), self.scale)

    @torch.inference_mode()
    def upsample_sparse(self, lr: torch.Tensor) -> torch.Tensor:
        """:meth:`upsample` of an image that is zero almost everywhere (the highlights beyond
        the radiometric stretch), from its non-zero pixels only."""
        return enlarge_sparse(lr.float(), self.scale)

    def pad(self, up: torch.Tensor, pad_multiple: int | None = None) -> torch.Tensor:
        """``up`` reflect-padded at the bottom and right to a multiple of ``pad_multiple``
        (default: the model's own multiple), as the network needs."""
        m = pad_multiple or self.multiple
        if m % self.multiple:
            raise InferenceError(f"pad multiple {m} must be a multiple of the model's {self.multiple}")
        h, w = up.shape[-2:]
        return reflect_pad(up.float(), (-h) % m, (-w) % m)

    @torch.inference_mode()
    def restore(
        self, up: torch.Tensor, pad_multiple: int | None = None, statistics: GlobalStatistics | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad (reflect, bottom/right), run, crop. Returns (raw SR, padded bicubic input).

        up: [B, C, H, W] bicubic image in [-1, 1]. ``pad_multiple`` defaults to the model's
        own multiple; the release pipeline uses 256. ``statistics``: as for
        :meth:`run_network`.
        """
        h, w = up.shape[-2:]
        padded = self.pad(up, pad_multiple)
        sr = self.run_network(padded, statistics)[..., :h, :w]
        return sr, padded

    @torch.inference_mode()
    def consistent(self, sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """Raw SR [B, C, sH, sW] and its input [B, C, H, W] in [-1, 1] -> SR agreeing with it.

        The identity unless the weights ask for LR consistency.
        """
        if not self.lr_consistency:
            return sr
        return enforce_lr_consistency(sr, self._to_device(lr), self.scale)

    @torch.inference_mode()
    def super_resolve(
        self,
        lr: np.ndarray,
        stats: ColorStats | None = None,
        pad_multiple: int = RELEASE_PAD_MULTIPLE,
        statistics: GlobalStatistics | None = None,
    ) -> np.ndarray:
        """One image, HxWxC float in [0, 1] -> (sH)x(sW)xC float32 in [0, 1].

        Without ``stats`` the colour match uses this image's own statistics, exactly as the
        release; a tiled caller passes global ones. ``statistics``: the network's global
        statistics (:meth:`run_network`), as a raster's tiles get them.
        """
        lr = np.asarray(lr, dtype=np.float32)
        if lr.ndim != 3 or lr.shape[2] != self.model.config.image_channels:
            raise InferenceError(
                f"expected an HxWx{self.model.config.image_channels} image, got shape {lr.shape}"
            )
        x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None] * 2 - 1
        sr, padded = self.restore(self.upsample(x), pad_multiple, statistics)
        return self.finish_image(sr, x, padded, stats)

    @torch.inference_mode()
    def finish_image(
        self, sr: torch.Tensor, x: torch.Tensor, padded: torch.Tensor, stats: ColorStats | None = None
    ) -> np.ndarray:
        """:meth:`restore`'s raw output [1, C, sH, sW] of the input ``x`` [1, C, H, W] (both in
        [-1, 1]; ``padded``: the bicubic input it ran on) -> the image as
        :meth:`super_resolve` returns it: LR consistency and colour match as the weights
        ask (``stats`` as there)."""
        sr = self.consistent(sr, x)
        if self.color_match:
            sr = (stats or image_stats(sr, padded)).apply(sr)
        return (sr / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
