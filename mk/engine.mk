# The tiled raster engine's benchmark (devtools/bench_engine.py; included by the main Makefile).
.PHONY: bench-engine
bench: bench-engine

bench-engine: venv
	$(PY) -m devtools.bench_engine
