# Dask cluster targets (docs/cluster.md). Included by the Makefile.
.PHONY: cluster-demo bench-cluster

# A real `dask scheduler` and two `dask worker` processes on 127.0.0.1 run the demo scene;
# the output is compared with the local run; the processes are stopped.
cluster-demo: venv
	$(PY) tools/cluster_demo.py

# The same 2048x2048 input locally and on two local workers, per-task overhead, the
# client's peak RSS at two sizes, one writer against GDAL-assembled parts.
bench-cluster: venv
	$(PY) -m devtools.bench_cluster
