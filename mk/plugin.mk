# QGIS plugin targets: link into the QGIS profile, demo, package, screenshot.
# Included by the Makefile (-include mk/*.mk); uses its VENV, PY, SYSTEM_PYTHON.

PLUGIN_NAME := slimdiffsr
QGIS_PROFILE ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default
QGIS_PLUGINS_DIR := $(QGIS_PROFILE)/python/plugins
QGIS_PROCESS ?= /usr/bin/qgis_process.bin
PLUGIN_VERSION := $(shell sed -n 's/^version=//p' metadata.txt)
PACKAGE_ZIP := build/$(PLUGIN_NAME)-$(PLUGIN_VERSION).zip
PACKAGE_MAX_MB := 25
# qgis_process needs a display platform and a runtime dir even headless.
QGIS_HEADLESS := QT_QPA_PLATFORM=offscreen XDG_RUNTIME_DIR=$${XDG_RUNTIME_DIR:-/tmp/runtime-$$(id -u)}

.PHONY: plugin-link demo bench-plugin figure package screenshot check-qgis340

install: plugin-link

# Link this folder into the QGIS profile as 'slimdiffsr' and enable it. The plugin then
# finds the backend at ./.venv by itself. Refuses to replace anything that is not our link.
plugin-link: system
	@mkdir -p "$(QGIS_PLUGINS_DIR)" "$${XDG_RUNTIME_DIR:-/tmp/runtime-$$(id -u)}"
	@chmod 700 "$${XDG_RUNTIME_DIR:-/tmp/runtime-$$(id -u)}"
	@target="$(QGIS_PLUGINS_DIR)/$(PLUGIN_NAME)"; \
	if [ "$$(readlink -f "$$target")" = "$$(readlink -f "$(CURDIR)")" ]; then :; \
	elif [ -L "$$target" ]; then ln -sfn "$(CURDIR)" "$$target" && echo "plugin link updated: $$target -> $(CURDIR)"; \
	elif [ -e "$$target" ]; then \
	  echo "error: $$target exists and is not a link to this folder; move it away, then run 'make install' again" >&2; exit 1; \
	else ln -s "$(CURDIR)" "$$target" && echo "plugin linked: $$target -> $(CURDIR)"; fi
	@out=$$($(QGIS_HEADLESS) $(QGIS_PROCESS) plugins enable $(PLUGIN_NAME) 2>&1) || echo "$$out" | grep -q "already enabled" \
	  || { echo "error: 'qgis_process plugins enable $(PLUGIN_NAME)' failed: $$(echo "$$out" | tail -1)" >&2; exit 1; }
	@$(QGIS_HEADLESS) $(QGIS_PROCESS) list 2>/dev/null | grep -q "$(PLUGIN_NAME):upscale" \
	  && echo "QGIS plugin '$(PLUGIN_NAME)' enabled (Processing Toolbox > SlimDiffSR)" \
	  || { echo "error: QGIS does not list $(PLUGIN_NAME):upscale; see docs/qgis.md 'Troubleshooting'" >&2; exit 1; }

# The main job end to end through qgis_process on a real Landsat 8 scene (downloaded once
# into build/demo). DEMO_SIZE=0 for the whole scene, DEMO_DEVICE=1 to force the CPU.
demo: install
	@$(PY) tools/demo.py

# Throughput through the plugin: the demo on a 1024x1024 window (4096x4096 output), no
# overviews, as a user runs it with default parameters.
bench-plugin: install
	@DEMO_SIZE=1024 DEMO_OVERVIEWS=0 $(PY) tools/demo.py

# The README's before/after figure: the Quality Check (slimdiffsr:assess) with the bundled
# model on a held-out WorldView-2 chip of Rotterdam (urban blocks) in ../shared/data/eval; prints its metrics.
FIGURE_INPUT ?= $(SHARED)/data/eval/solaris/pan3.tif
figure: install
	@$(QGIS_HEADLESS) $(QGIS_PROCESS) --json run $(PLUGIN_NAME):assess -- INPUT=$(FIGURE_INPUT) \
	  OUTPUT_HTML=build/figure.html OUTPUT_PNG=docs/images/before_after.png > build/figure.json
	@$(PY) -c "import json; r = json.load(open('build/figure.json'))['results']; \
	  print({k: r[k] for k in ('PSNR_BICUBIC', 'PSNR_SR', 'SSIM_BICUBIC', 'SSIM_SR', 'VERDICT')})"

# The zip for plugins.qgis.org: `git archive` of the committed tree, limited to an
# allow-list (the plugin, the backend, resources, requirements, licence, readme and the QGIS
# guide) minus the training-only files marked export-ignore in .gitattributes. No tests,
# tools, make files or benchmarks. Users create the backend with slimdiffsr:setup.
PACKAGE_PATHS := __init__.py metadata.txt LICENSE README.md requirements.txt plugin backend resources docs/qgis.md
package:
	@mkdir -p build && rm -f $(PACKAGE_ZIP)
	@git diff --quiet HEAD -- $(PACKAGE_PATHS) || echo "note: uncommitted changes to packaged files are not in the zip (it is built from HEAD)"
	@git archive --format=zip --prefix=$(PLUGIN_NAME)/ -o $(PACKAGE_ZIP) HEAD -- $(PACKAGE_PATHS)
	@size=$$(stat -c %s $(PACKAGE_ZIP)); mb=$$(awk "BEGIN {printf \"%.1f\", $$size / 1048576}"); \
	if [ $$size -gt $$(( $(PACKAGE_MAX_MB) * 1048576 )) ]; then \
	  echo "error: $(PACKAGE_ZIP) is $$mb MB, over the $(PACKAGE_MAX_MB) MB limit of plugins.qgis.org; shrink resources/weights" >&2; exit 1; fi; \
	n=$$($(SYSTEM_PYTHON) -c "import sys, zipfile; print(sum(not n.endswith('/') for n in zipfile.ZipFile(sys.argv[1]).namelist()))" $(PACKAGE_ZIP)); \
	echo "$(PACKAGE_ZIP): $$n files, $$mb MB"

# Screenshot of the 'SlimDiffSR Upscale' dialog for the documentation (headless, Xvfb).
screenshot: system
	@mkdir -p docs/images
	@XDG_RUNTIME_DIR=$${XDG_RUNTIME_DIR:-/tmp/runtime-$$(id -u)} xvfb-run -a -s "-screen 0 1400x1000x24" \
	  $(SYSTEM_PYTHON) tools/screenshot.py docs/images/upscale_dialog.png

# QGIS 3.40 LTR (Debian 13, Python 3.13) as a user meets it: a debootstrap trixie root
# outside the repository with apt's qgis and python3-qgis only, this zip unzipped into a
# fresh profile, slimdiffsr:setup (twice) and slimdiffsr:upscale on a fixture; prints the
# versions, setup time and environment size (tools/check_trixie.sh). Needs root, network and
# ~10 GB; takes 15-30 minutes the first time. Not part of `make test` (too heavy for CI).
TRIXIE_ROOT ?= /var/tmp/slimdiffsr-trixie
check-qgis340:
	@TRIXIE_ROOT=$(TRIXIE_ROOT) SLIMDIFFSR_SHARED=$(SHARED) tools/check_trixie.sh
