# The bundled default model (resources/weights, MODEL_CARD.md). Training is resumable:
# each `make train-default` runs at most MAX_MINUTES (default 110) across its stages and
# continues where the last call stopped; x4 is 13,000 steps of L1 from scratch (101 min on
# a 2-core CPU), 9000 steps of squared error (60 min), then 4000 on 256 px crops (36 min):
# two calls (see MODEL_CARD.md). DEFAULT_SCALE=8 fine-tunes x4's first stage for x8
# (2000 steps, 20 min), then 1500 steps on 384 px crops (14 min).
DEFAULT_SCALE ?= 4

.PHONY: train-default evaluate-default

train-default: install
	SCALE=$(DEFAULT_SCALE) SHARED=$(SHARED) PY=$(PY) bash tools/train_default.sh

# Recompute the model card's quality and speed numbers on ../shared/data/eval.
evaluate-default: install
	$(PY) -m backend.default_model evaluate --shared $(SHARED) --scale $(DEFAULT_SCALE)
