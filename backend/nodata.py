"""Which nodata values a data type can hold: one rule for the command line, QGIS and the engine.

Standard library only, so the QGIS side (which has no numpy-based backend code) refuses a
value such as 300 on a Byte layer before the run, with the engine's own words.
"""

from __future__ import annotations

import math

INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65_535),
    "int16": (-32_768, 32_767),
    "uint32": (0, 4_294_967_295),
    "int32": (-2_147_483_648, 2_147_483_647),
    "uint64": (0, 18_446_744_073_709_551_615),
    "int64": (-9_223_372_036_854_775_808, 9_223_372_036_854_775_807),
}
FLOAT_MAX: dict[str, float] = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}


def nodata_problem(value: float, dtype: str) -> str | None:
    """Why ``dtype`` pixels can never equal ``value`` (300, -1, 0.5, nan or inf on uint8;
    1e40 on float32), as the user's one-line error; None when the value can occur."""
    problem = None
    if dtype in INTEGER_RANGES:
        low, high = INTEGER_RANGES[dtype]
        if not math.isfinite(value) or value != int(value):
            problem = f"{dtype} pixels are whole numbers, {value} is not one"
        elif not low <= value <= high:
            problem = f"{dtype} pixels range from {low} to {high}"
    elif dtype in FLOAT_MAX and math.isfinite(value) and abs(value) > FLOAT_MAX[dtype]:
        problem = f"{dtype} pixels cannot exceed {FLOAT_MAX[dtype]:.4g} in magnitude"
    if problem is None:
        return None
    return (
        f"nodata value {value:g} cannot occur in this raster ({problem}); give a value "
        "the data type can hold, or none"
    )
