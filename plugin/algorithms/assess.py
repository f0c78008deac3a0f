"""'SlimDiffSR Quality Check': does super-resolution beat bicubic on this imagery?"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
)

from .base import SlimDiffSRAlgorithm, absolute, integer_parameter, tr


class AssessAlgorithm(SlimDiffSRAlgorithm):
    EXTENT = "EXTENT"
    SAMPLE_SIZE = "SAMPLE_SIZE"
    OUTPUT_HTML = "OUTPUT_HTML"
    OUTPUT_PNG = "OUTPUT_PNG"

    def name(self) -> str:
        return "assess"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return tr("SlimDiffSR Quality Check")

    def tags(self) -> list[str]:
        return [tr(t) for t in ("super-resolution", "quality", "psnr", "ssim", "evaluate", "bicubic")]

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return tr(
            "<p>Tells you, in a minute, whether super-resolution helps on <i>your</i> imagery before you "
            "run it on a large area.</p>"
            "<p>A sample of the layer (the centre of the chosen extent, or of the layer) is taken as the "
            "truth and made coarser by the model's scale (x2, x4 or x8) in three ways: the antialiased "
            "bicubic reduction of super-resolution benchmarks, a point-sampled reduction without "
            "antialiasing (as many resampled products and undersampled sensors), and a sensor-like "
            "product (blur, noise, JPEG). Each is restored twice, with SlimDiffSR and with ordinary "
            "bicubic resampling, and compared with the original sample.</p>"
            "<p><b>Results</b>: PSNR (in dB) and SSIM (0 to 1) per reduction, higher is better; the "
            "outputs hold the reduction where SlimDiffSR does worst. The verdict says it helps only "
            "when it helps under all three. An HTML report shows the images per reduction (degraded "
            "input, bicubic, SlimDiffSR, original, each labelled with its PSNR), optionally as a PNG.</p>"
            "<p>Use the same weights, bands and device as you plan to use with <i>SlimDiffSR Upscale</i>. "
            "The coarsening is synthetic, so also look at the images.</p>"
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input raster")))
        self.addParameter(
            QgsProcessingParameterExtent(
                self.EXTENT, tr("Sample area (empty: centre of the layer)"), optional=True
            )
        )
        self.add_model_parameters()
        self.addParameter(
            integer_parameter(self.SAMPLE_SIZE, tr("Sample size in pixels (side)"), 512, 64, 4096)
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_HTML, tr("Quality report"), tr("HTML files (*.html)")
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_PNG,
                tr("Side-by-side image"),
                tr("PNG files (*.png)"),
                optional=True,
                createByDefault=False,
            )
        )
        self.addOutput(QgsProcessingOutputNumber("PSNR_SR", tr("PSNR SlimDiffSR (dB), worst reduction")))
        self.addOutput(QgsProcessingOutputNumber("SSIM_SR", tr("SSIM SlimDiffSR, worst reduction")))
        self.addOutput(QgsProcessingOutputNumber("PSNR_BICUBIC", tr("PSNR bicubic (dB), worst reduction")))
        self.addOutput(QgsProcessingOutputNumber("SSIM_BICUBIC", tr("SSIM bicubic, worst reduction")))
        self.addOutput(
            QgsProcessingOutputBoolean("SR_HELPS", tr("SlimDiffSR beats bicubic under every reduction"))
        )
        self.addOutput(QgsProcessingOutputString("VERDICT", tr("Verdict")))

    def processAlgorithm(  # noqa: N802 - QGIS API
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        layer, source = self.input_path(parameters, context)
        options = self.model_options(parameters, context)
        bounds = None
        if parameters.get(self.EXTENT) not in (None, ""):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            if not extent.isNull() and not extent.isEmpty():
                bounds = [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]
        html = absolute(self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context))
        png = absolute(self.parameterAsFileOutput(parameters, self.OUTPUT_PNG, context)) or None
        options.update(
            bounds=bounds,
            sample_size=self.parameterAsInt(parameters, self.SAMPLE_SIZE, context),
            html=html,
            png=png,
        )
        report = self.run_worker({"type": "assess", "input": source, "options": options}, feedback)
        for check in report.get("checks") or []:
            feedback.pushInfo(
                f"{check['label']}: SlimDiffSR PSNR {check['psnr_sr']:.2f} dB, SSIM {check['ssim_sr']:.4f} | "
                f"bicubic PSNR {check['psnr_bicubic']:.2f} dB, SSIM {check['ssim_bicubic']:.4f}"
            )
        feedback.pushInfo(str(report["verdict"]))
        results: dict[str, Any] = {
            self.OUTPUT_HTML: html,
            "PSNR_SR": report["psnr_sr"],
            "SSIM_SR": report["ssim_sr"],
            "PSNR_BICUBIC": report["psnr_bicubic"],
            "SSIM_BICUBIC": report["ssim_bicubic"],
            "SR_HELPS": bool(report["helps"]),
            "VERDICT": report["verdict"],
        }
        if png:
            results[self.OUTPUT_PNG] = png
        return results
