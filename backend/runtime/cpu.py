"""What this CPU can compute fast: its model name, the ISA flags that matter, its cores.

Reduced precision only pays where the hardware has it: bf16 on CPUs with AVX512-BF16 or
AMX (emulated bf16 on AVX2 measured slower than fp32), int8 dot products everywhere from
AVX2 on (faster with VNNI). Every speed figure names the CPU it was measured on, so the
benchmark prints this description.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

# Flags that decide a fast path, in the order they are reported.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name, the subset of ``ISA_FLAGS`` it has, and its core counts."""

    model: str
    flags: frozenset[str]
    physical_cores: int
    logical_cores: int

    @property
    def isa(self) -> str:
        """The widest vector ISA, as the log names it: amx, avx512, avx2 or baseline."""
        if "amx_bf16" in self.flags:
            return "amx"
        if "avx512f" in self.flags:
            return "avx512"
        if "avx2" in self.flags:
            return "avx2"
        return "baseline"

    @property
    def native_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def fast_int8(self) -> bool:
        """int8 dot-product instructions (VNNI, AMX). Without them (plain AVX2: AMD Zen 2/3,
        Intel before Alder Lake) int8 convolutions measured no faster than OpenVINO's fp32
        on the bundled model, so the calibration a run would spend on them is not worth it."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    def describe(self) -> str:
        """One line for logs and benchmark headers: model, cores, ISA flags."""
        flags = " ".join(f for f in ISA_FLAGS if f in self.flags) or "none of " + " ".join(ISA_FLAGS)
        return f"{self.model}, {self.physical_cores} cores ({self.logical_cores} threads), {flags}"


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str], int]:
    """(model name, ISA flags, physical cores) from the text of Linux's /proc/cpuinfo."""
    model, flags = "", frozenset[str]()
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and not model:
            model = value
        elif key == "flags" and not flags:
            flags = frozenset(value.split()) & frozenset(ISA_FLAGS)
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
            cores.add((physical_id, core_id))
    return model, flags, len(cores)


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU. Off Linux the flags come from torch's view of the CPU."""
    logical = os.cpu_count() or 1
    try:
        model, flags, physical = parse_cpuinfo(cpuinfo.read_text())
    except OSError:
        model, flags, physical = "", frozenset(), 0
    if not flags:
        flags = _torch_flags()
    if not physical:
        try:
            import psutil

            physical = psutil.cpu_count(logical=False) or logical
        except ImportError:
            physical = logical
    return CpuInfo(model or platform.processor() or platform.machine(), flags, max(1, physical), logical)


def _torch_flags() -> frozenset[str]:
    """ISA flags from torch's CPU capability (Windows, macOS): avx2 or avx512 only."""
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability().lower()
    except (ImportError, AttributeError, RuntimeError):
        return frozenset()
    if "avx512" in capability:
        return frozenset({"avx2", "fma", "avx512f"})
    if "avx2" in capability:
        return frozenset({"avx2", "fma"})
    return frozenset()
