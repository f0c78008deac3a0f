"""QGIS side of SlimDiffSR: a thin Processing shell around the backend worker.

Nothing here imports torch, numpy or rasterio: the model runs in a separate process
(see ``worker_client.py`` and ``backend/worker.py``).
"""
