"""The object QGIS creates through ``classFactory``; it registers the provider and, in the
desktop, offers to set up the backend when no environment is found.

``qgis_process`` calls ``initProcessing()`` alone, the desktop calls ``initGui()``: both
end in the same idempotent registration.
"""

from __future__ import annotations

from qgis.core import Qgis, QgsApplication

from .provider import SlimDiffSRProvider
from .settings import backend_env_dir, backend_python_setting
from .worker_client import SETUP_ALGORITHM, SETUP_NAME, WorkerError, locate_python

PROMPT_TITLE = "SlimDiffSR"


def environment_problem() -> str | None:
    """Why the algorithms cannot run yet (no process is started: file checks only), or None."""
    try:
        locate_python(backend_python_setting(), env_dir=backend_env_dir())
    except WorkerError as exc:
        return str(exc)
    return None


def open_setup_dialog() -> None:
    """The setup algorithm's dialog, as if chosen in the Processing Toolbox."""
    import processing

    processing.execAlgorithmDialog(SETUP_ALGORITHM, {})


def show_setup_prompt(iface, problem: str):
    """A message-bar item with a button that opens the setup algorithm; returns the item."""
    from qgis.PyQt.QtWidgets import QPushButton

    bar = iface.messageBar()
    item = bar.createMessage(PROMPT_TITLE, "the backend is not set up yet: " + problem.split(";")[0])
    button = QPushButton(SETUP_NAME + "...", item)
    button.setObjectName("slimdiffsr_setup_button")

    def clicked() -> None:
        bar.popWidget(item)
        open_setup_dialog()

    button.clicked.connect(clicked)
    item.layout().addWidget(button)
    bar.pushWidget(item, Qgis.Warning)
    return item


class SlimDiffSRPlugin:
    def __init__(self, iface=None) -> None:
        self.iface = iface
        self.provider: SlimDiffSRProvider | None = None  # keep a reference: QGIS does not own it
        self.prompt = None

    def initProcessing(self) -> None:  # noqa: N802 - QGIS API
        if self.provider is None:
            self.provider = SlimDiffSRProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        self.initProcessing()
        problem = environment_problem()
        if problem and self.iface is not None and self.prompt is None:
            self.prompt = show_setup_prompt(self.iface, problem)

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
