"""How a process that runs the network asks the kernel for memory.

The network's activations are tensors of hundreds of megabytes, allocated and freed for
every tile. Such blocks come straight from the kernel (mmap) and each 4 KiB page is
faulted in again on first touch, tile after tile: on a 2-core virtual machine (AMD EPYC
family 25 model 1, Zen 3, AVX2 + FMA, no AVX-512 or AMX) a 1024^2 -> 4096^2 run in torch
fp32 took 4.0-4.4 million page faults and 12.6-12.7 s of kernel time. torch can back its
large allocations with transparent huge pages (2 MiB, where the system leaves that to the
program: the common ``madvise`` setting); the same run then took 0.26-0.35 million faults,
4.7 s of kernel time and 24.0 / 25.9 s of engine time against 27.2 / 30.0 s (alternating
runs). OpenVINO reuses its own buffers between images of one shape and needs nothing of
this.
"""

from __future__ import annotations

import os
import sys

TORCH_HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"
"""torch's switch for transparent huge pages in its CPU allocator, read once, at the
allocator's first use."""


def prefer_huge_pages() -> None:
    """Ask torch for huge pages unless the user set the switch; call before torch is
    imported (a later call changes nothing, which is why it is checked here)."""
    if "torch" in sys.modules:
        return
    os.environ.setdefault(TORCH_HUGE_PAGES, "1")
