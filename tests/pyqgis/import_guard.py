"""``python import_guard.py PLUGINS_FOLDER``: load the plugin ``slimdiffsr`` from that folder
into a fresh QGIS application with every import checked, and print its algorithm ids.

The QGIS side may import only the standard library and qgis: no torch, numpy or rasterio, and
of the backend only its standard-library modules, by relative import as the plugin package's
own. Run in a fresh interpreter (tests/pyqgis/test_provider.py) because what a module imports
shows only on its first import.
"""

from __future__ import annotations

import builtins
import importlib.util
import sys

FORBIDDEN = ("torch", "rasterio", "safetensors", "numpy", "backend")
ALLOWED_BACKEND = (
    "slimdiffsr.backend",
    "slimdiffsr.backend.bands",
    "slimdiffsr.backend.nodata",
    "slimdiffsr.backend.errors",
    "slimdiffsr.backend.runtime",
    "slimdiffsr.backend.runtime.choices",
)
real_import = builtins.__import__


def guarded(name, globals=None, locals=None, fromlist=(), level=0):
    full = name
    if level:
        full = importlib.util.resolve_name("." * level + name, (globals or {}).get("__package__"))
    backend = full.startswith("slimdiffsr.backend")
    if full.split(".")[0] in FORBIDDEN or (backend and full not in ALLOWED_BACKEND):
        raise ImportError("the QGIS side must not import " + full)
    return real_import(name, globals, locals, fromlist, level)


def main(plugins: str) -> list[str]:
    builtins.__import__ = guarded
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    sys.path.insert(0, plugins)
    import slimdiffsr

    plugin = slimdiffsr.classFactory(None)
    plugin.initProcessing()
    plugin.initProcessing()  # idempotent: qgis_process and the desktop may both call it
    ids = sorted(a.id() for a in plugin.provider.algorithms())
    plugin.unload()
    return ids


if __name__ == "__main__":
    print(main(sys.argv[1]))
