# The tiled raster engine's benchmark (included by the main Makefile).
.PHONY: bench-engine
bench: bench-engine

bench-engine: venv
	$(PY) -m backend.engine.bench
