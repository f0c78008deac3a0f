"""Memory is bounded and independent of the raster size (each run in a fresh process)."""

from __future__ import annotations

import pytest

from devtools.bench_engine import peak_rss

pytestmark = pytest.mark.slow  # a 4000x4000 raster through the engine, minutes on two cores


def test_peak_rss_does_not_grow_with_raster_size() -> None:
    """4000x4000x3 at x4 (a 16000x16000 output, 768 MB as uint8) against 1000x1000.

    The first 150 rows hold data across the full width, so the widest live set of
    accumulators (two rows of output blocks over 16000 pixels) is exercised; the rest is
    nodata, which keeps the run short (its windows skip the model but still go through
    the blender, the block writer and the GeoTIFF).
    """
    small = peak_rss(1000, "nano", valid_rows=150)
    large = peak_rss(4000, "nano", valid_rows=150)
    assert large["tiles"] > 500 and large["skipped"] > 0.8 * large["tiles"]
    print(small, large)
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 200, (small, large)
