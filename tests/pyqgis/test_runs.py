"""slimdiffsr:upscale run by Processing inside QGIS, with the real worker in the backend
environment: one run, what the batch dialog and the model designer do, and cancelling."""

from __future__ import annotations

import re
import time

import processing
import pytest
from qgis.core import (
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
)

from .conftest import assert_upscaled


class LoggingFeedback(QgsProcessingFeedback):
    """Keeps what the algorithm reports to the log panel."""

    def __init__(self) -> None:
        super().__init__()
        self.info: list[str] = []

    def pushInfo(self, info: str) -> None:  # noqa: N802 - QGIS API
        self.info.append(info)
        super().pushInfo(info)


def test_upscale_keeps_size_transform_and_custom_crs(plugin, data, tmp_path) -> None:
    out = tmp_path / "sr.tif"
    params = {"INPUT": str(data["custom"]), "WEIGHTS": str(data["weights"]), "DEVICE": 1, "PRECISION": 1}
    feedback = LoggingFeedback()
    result = processing.run(
        "slimdiffsr:upscale", {**params, "TILE_SIZE": 32, "OVERLAP": 8, "OUTPUT": str(out)}, feedback=feedback
    )
    assert result["OUTPUT"] == str(out)
    assert any(re.search(r"device: cpu \(\w+\), fp32", line) for line in feedback.info), feedback.info
    assert_upscaled(data["custom"], out, 4, 3)
    crs = QgsRasterLayer(str(out)).crs()
    assert "Albers" in crs.toWkt() and not crs.authid().startswith("EPSG")


def test_batch_of_two_layers_and_a_model_in_one_session(plugin, data, tmp_path) -> None:
    """What the batch dialog does (one run per row, same session) and a model using the algorithm."""
    rows = [(data["custom"], "", tmp_path / "b1.tif"), (data["utm"], "3,2,1", tmp_path / "b2.tif")]
    for src, bands, dest in rows:
        params = {"INPUT": str(src), "WEIGHTS": str(data["weights"]), "BANDS": bands, "PRECISION": 1}
        result = processing.run("slimdiffsr:upscale", {**params, "OUTPUT": str(dest)})
        assert result["OUTPUT"] == str(dest)
        assert_upscaled(src, dest, 4, 3)

    source = QgsProcessingModelChildParameterSource
    model = QgsProcessingModelAlgorithm("sr model", "tests")
    model.addModelParameter(
        QgsProcessingParameterRasterLayer("image", "image"), QgsProcessingModelParameter("image")
    )
    child = QgsProcessingModelChildAlgorithm("slimdiffsr:upscale")
    child.setChildId("sr")
    child.addParameterSources("INPUT", [source.fromModelParameter("image")])
    child.addParameterSources("WEIGHTS", [source.fromStaticValue(str(data["weights"]))])
    child.addParameterSources("PRECISION", [source.fromStaticValue(1)])
    # as the model designer's dialog does: every other parameter at its default
    upscale = QgsApplication.processingRegistry().algorithmById("slimdiffsr:upscale")
    for p in upscale.parameterDefinitions():
        unset = p.name() not in child.parameterSources() and not p.isDestination()
        if unset and p.defaultValue() is not None:
            child.addParameterSources(p.name(), [source.fromStaticValue(p.defaultValue())])
    output = QgsProcessingModelOutput("result")
    output.setChildId("sr")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"result": output})
    model.addChildAlgorithm(child)
    ok, errors = model.validate()
    assert ok, errors
    result = processing.run(model, {"image": str(data["utm"]), "sr:result": str(tmp_path / "m.tif")})
    assert result["sr:result"] == str(tmp_path / "m.tif")
    assert_upscaled(data["utm"], tmp_path / "m.tif", 4, 3)


class CancelOnProgress(QgsProcessingFeedback):
    """Cancels at the first progress report, as a user pressing Cancel in the dialog."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled_at: float | None = None

    def setProgress(self, progress: float) -> None:  # noqa: N802 - QGIS API
        super().setProgress(progress)
        if progress > 0 and not self.isCanceled():
            self.cancelled_at = progress
            self.cancel()


def test_cancel_stops_the_worker_and_leaves_no_output(plugin, data, tmp_path) -> None:
    out = tmp_path / "cancelled.tif"
    params = {"INPUT": str(data["big"]), "WEIGHTS": str(data["weights"]), "PRECISION": 1}
    params.update(TILE_SIZE=32, OVERLAP=8, BATCH_SIZE=1, OUTPUT=str(out))
    feedback = CancelOnProgress()
    started = time.monotonic()
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("slimdiffsr:upscale", params, feedback=feedback)
    assert feedback.cancelled_at is not None
    assert time.monotonic() - started < 120
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("cancelled")]
