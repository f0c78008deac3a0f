"""Development tools: benchmarks, random-weight model presets, the receptive-margin
measurement and synthetic rasters.

Outside ``backend/`` on purpose: the plugin zip holds only the shipped paths (mk/plugin.mk,
PACKAGE_PATHS), so nothing here can reach users, and nothing shipped may import it. Run
from the repository root (``python -m devtools.bench``, the Makefile, the tests).
"""
