# The tiled raster engine's benchmark (devtools/bench_engine.py; included by the main Makefile).
# BENCH_ENGINE_ARGS, e.g. "--size 256 --rss-sizes 500".
.PHONY: bench-engine
bench: bench-engine

bench-engine: venv
	$(PY) -m devtools.bench_engine $(BENCH_ENGINE_ARGS)
