"""'Set up SlimDiffSR backend': create the worker's Python environment from inside QGIS.

For users who install the plugin from a zip (Windows, macOS, any Linux) and cannot run
``make``: the environment goes into the QGIS profile, is created with QGIS's own Python
(or the one given), and is checked with a one-tile self-test. The work itself is in
``plugin/backend_env.py``, shared with ``make install``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterString,
)

from ..backend_env import (
    SETUP_NAME,
    TORCH_BUILDS,
    TORCH_CPU_INDEX_URL,
    EnvError,
    Hooks,
    SetupCancelledError,
    setup_environment,
)
from ..settings import backend_env_dir
from ..worker_client import plugin_dir
from .base import SlimDiffSRBase, advanced, file_parameter, tr


class SetupAlgorithm(SlimDiffSRBase):
    TORCH_BUILD = "TORCH_BUILD"
    WHEELHOUSE = "WHEELHOUSE"
    PYTHON = "PYTHON"
    TORCH_INDEX_URL = "TORCH_INDEX_URL"
    FORCE = "FORCE"

    def name(self) -> str:
        return "setup"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return tr(SETUP_NAME)

    def group(self) -> str:
        return tr("Setup")

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "setup"

    def tags(self) -> list[str]:
        return [tr(t) for t in ("install", "setup", "environment", "torch", "pip", "dependencies")]

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return tr(
            "<p>Run this once after installing the plugin. It creates the Python environment in which "
            "SlimDiffSR's neural network runs (torch, rasterio), separate from QGIS so that QGIS stays "
            "stable, in your QGIS profile folder (plugin updates keep it). With the CPU build it downloads "
            "about 0.3 GB and takes 1.1 GB; with the CUDA build several GB. pip's progress appears in the "
            "log, which ends with a self-test on a small raster, the preparation of the bundled models for "
            "this computer (their networks exported for its CPU runtime, about 20 s, so that the first "
            "raster does not wait for it) and the environment's size. Running it "
            "again on a healthy environment takes seconds; Cancel leaves no half-made environment behind.</p>"
            "<p><b>Torch build</b>: auto uses CUDA where an NVIDIA GPU is visible, else the CPU build, from "
            "PyTorch's CPU index ({0}). Where that index is blocked, torch comes from the "
            "package index, whose Linux build is the CUDA one (about 5 GB): give <b>Package index for "
            "torch</b> a mirror of it, or a folder holding its torch wheel for your Python "
            "(<code>pip download torch==VERSION --no-deps --only-binary=:all: --python-version 3.X "
            "--index-url {0} -d folder</code> on a machine that reaches it). "
            "<b>Wheelhouse</b> (offline sites): a folder of all the wheels made elsewhere with "
            "<code>pip download -r requirements.txt -d wheels</code> plus <code>pip download pip</code> "
            "(same Python version and system); nothing is downloaded then. <b>Python</b>: empty for "
            "QGIS's own Python.</p>"
            "<p>QGIS's Python needs no pip or ensurepip (Debian 13's QGIS has neither): pip is installed "
            "into the new environment from its pinned wheel. Only a Python without <code>venv</code> "
            "needs a package (Debian/Ubuntu: <code>python3-venv</code>).</p>"
        ).format(TORCH_CPU_INDEX_URL)

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(
            QgsProcessingParameterEnum(
                self.TORCH_BUILD,
                tr("Torch build (auto: CUDA where an NVIDIA GPU is visible)"),
                options=list(TORCH_BUILDS),
                defaultValue=0,
            )
        )
        self.addParameter(
            file_parameter(
                self.WHEELHOUSE,
                tr("Wheelhouse folder for offline installation (empty: download)"),
                folder=True,
            )
        )
        self.addParameter(
            file_parameter(
                self.PYTHON, tr("Python to create the environment with (empty: QGIS's own Python)")
            )
        )
        index_label = tr(
            "Package index or wheel folder for torch (empty: for the CPU build {}; '-': pip's own)"
        ).format(TORCH_CPU_INDEX_URL)
        self.addParameter(
            advanced(QgsProcessingParameterString(self.TORCH_INDEX_URL, index_label, optional=True))
        )
        self.addParameter(
            advanced(QgsProcessingParameterBoolean(self.FORCE, tr("Rebuild even if healthy"), False))
        )
        self.addOutput(QgsProcessingOutputString("PYTHON_PATH", tr("Backend Python")))
        self.addOutput(QgsProcessingOutputNumber("ENV_SIZE_MB", tr("Environment size (MB)")))
        self.addOutput(QgsProcessingOutputNumber("SECONDS", tr("Time (s)")))

    def processAlgorithm(  # noqa: N802 - QGIS API
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        build = TORCH_BUILDS[self.parameterAsEnum(parameters, self.TORCH_BUILD, context)]
        wheelhouse = self.parameterAsFile(parameters, self.WHEELHOUSE, context).strip()
        python = self.parameterAsFile(parameters, self.PYTHON, context).strip()
        index = self.parameterAsString(parameters, self.TORCH_INDEX_URL, context).strip()
        env_dir = backend_env_dir()
        feedback.pushInfo(tr("backend environment: {}").format(env_dir))
        hooks = Hooks(
            info=feedback.pushInfo,
            warning=feedback.pushWarning,
            progress=feedback.setProgress,
            canceled=feedback.isCanceled,
        )
        try:
            result = setup_environment(
                env_dir,
                [plugin_dir() / "requirements.txt"],
                base_python=Path(python) if python else None,
                torch_build=build,
                torch_index_url=None if not index else ("" if index == "-" else index),
                wheelhouse=Path(wheelhouse) if wheelhouse else None,
                root=plugin_dir(),
                force=self.parameterAsBoolean(parameters, self.FORCE, context),
                hooks=hooks,
            )
        except SetupCancelledError:
            raise QgsProcessingException(
                tr("setup cancelled; no environment was left half-made (run the setup again to finish)")
            ) from None
        except EnvError as exc:
            raise QgsProcessingException(tr("SlimDiffSR setup: {}").format(exc)) from None
        return {
            "PYTHON_PATH": str(result.python),
            "ENV_SIZE_MB": round(result.size_bytes / 2**20, 1),
            "SECONDS": round(result.seconds, 1),
        }
