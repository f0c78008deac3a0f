# The bundled default model (resources/weights, MODEL_CARD.md). Training is resumable:
# each `make train-default` runs at most MAX_MINUTES (default 110) and continues where the
# last call stopped; 3500 steps in all (see MODEL_CARD.md for the measured time).
DEFAULT_SCALE ?= 4

.PHONY: train-default evaluate-default

train-default: install
	SCALE=$(DEFAULT_SCALE) SHARED=$(SHARED) PY=$(PY) bash tools/train_default.sh
	@run=build/default_x$(DEFAULT_SCALE); w=$$run/slimdiffsr_default_x$(DEFAULT_SCALE).safetensors; \
	if $(PY) -c "import csv,sys; rows=list(csv.DictReader(open('$$run/train_log.csv'))); sys.exit(0 if rows and rows[-1].get('step')==rows[-1].get('step') else 1)"; then \
	  echo "weights of this run: $$w (copy to resources/weights/ once training has finished)"; fi

# Recompute the model card's quality and speed numbers on ../shared/data/eval.
evaluate-default: install
	$(PY) -m backend.default_model evaluate --shared $(SHARED) --scale $(DEFAULT_SCALE)
