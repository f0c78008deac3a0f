"""Grab the 'SlimDiffSR Upscale' dialog as QGIS shows it, for the documentation.

Run headless with QGIS's own Python under Xvfb (``make screenshot``):
    xvfb-run -a /usr/bin/python3 tools/screenshot.py docs/images/upscale_dialog.png

A demo raster is loaded into the project so the dialog shows a real layer; the advanced
parameters stay folded, as users first see the dialog (docs/qgis.md lists them).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else ROOT / "docs" / "images" / "upscale_dialog.png").resolve()
    profile = tempfile.mkdtemp(prefix="slimdiffsr-screenshot-")
    plugins = Path(profile) / "plugins"
    plugins.mkdir()
    (plugins / "slimdiffsr").symlink_to(ROOT, target_is_directory=True)
    os.environ["QGIS_CUSTOM_CONFIG_PATH"] = profile

    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QSize, QTimer

    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], True)
    app.initQgis()
    sys.path[:0] = ["/usr/share/qgis/python/plugins", str(plugins)]
    from processing.core.Processing import Processing

    Processing.initialize()
    import slimdiffsr

    plugin = slimdiffsr.classFactory(None)
    plugin.initProcessing()

    demo = ROOT / "build" / "demo" / "demo_input_512.tif"
    layer_path = demo if demo.is_file() else next(iter(sorted((ROOT / "build" / "demo").glob("*.tif"))), None)
    if layer_path is not None:
        QgsProject.instance().addMapLayer(QgsRasterLayer(str(layer_path), "Landsat 8, 2020-05-18"))

    from processing.gui.AlgorithmDialog import AlgorithmDialog

    algorithm = QgsApplication.processingRegistry().algorithmById("slimdiffsr:upscale")
    dialog = AlgorithmDialog(algorithm.create(), False, None)
    dialog.resize(QSize(1100, 760))
    dialog.show()

    def grab() -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        ok = dialog.grab().save(str(target))
        print(f"{'wrote' if ok else 'could not write'} {target}")
        app.exit(0 if ok else 1)

    QTimer.singleShot(1500, grab)
    code = app.exec_()
    plugin.unload()
    os._exit(code)  # skip QGIS's teardown, which can crash in a standalone script


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
