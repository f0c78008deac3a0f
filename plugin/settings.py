"""Plugin settings stored with the Processing options (Settings > Options > Processing).

Read through ``QgsSettings`` directly, so the value is found in ``qgis_process`` and in
worker threads as well as in the desktop; the Processing options panel only edits it.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication, QgsSettings

from .backend_env import profile_env_dir

PROVIDER_GROUP = "SlimDiffSR"
PYTHON_SETTING = "SLIMDIFFSR_PYTHON"
_KEY = f"/Processing/Configuration/{PYTHON_SETTING}"
SCHEDULER_SETTING = "SLIMDIFFSR_DASK_SCHEDULER"
_SCHEDULER_KEY = f"/Processing/Configuration/{SCHEDULER_SETTING}"


def backend_python_setting() -> str:
    """The 'Backend Python' path set in the Processing options ('' when unset)."""
    value = QgsSettings().value(_KEY, "")
    return str(value or "").strip()


def dask_scheduler_setting() -> str:
    """The 'Dask scheduler address' ('' when unset: upscale on this computer)."""
    value = QgsSettings().value(_SCHEDULER_KEY, "")
    return str(value or "").strip()


def backend_env_dir() -> Path:
    """The environment the setup algorithm creates: in the active QGIS profile (which a plugin
    update does not replace), e.g. ``.../QGIS3/profiles/default/slimdiffsr/env``."""
    return profile_env_dir(Path(QgsApplication.qgisSettingsDirPath()))


def register_settings(icon) -> bool:
    """Show the setting in Processing > Options > Providers; False when Processing is absent."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting
    except ImportError:
        return False
    ProcessingConfig.settingIcons[PROVIDER_GROUP] = icon
    ProcessingConfig.addSetting(
        Setting(
            PROVIDER_GROUP,
            PYTHON_SETTING,
            "Backend Python (empty: the environment made by 'Set up SlimDiffSR backend')",
            "",
            valuetype=Setting.FILE,
        )
    )
    ProcessingConfig.addSetting(
        Setting(
            PROVIDER_GROUP,
            SCHEDULER_SETTING,
            "Dask scheduler address (tcp://HOST:PORT or local:N; empty: run on this computer)",
            "",
        )
    )
    ProcessingConfig.readSettings()
    return True


def unregister_settings() -> None:
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return
    ProcessingConfig.removeSetting(PYTHON_SETTING)
    ProcessingConfig.removeSetting(SCHEDULER_SETTING)
