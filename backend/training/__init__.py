"""How a SlimDiffSR student is made: data, degradations, teacher, pruning, distillation.

Everything here is QGIS-free and optional for inference: the upscale engine never
imports this package. The teacher side needs the extra packages of
``requirements-train.txt`` (diffusers, peft); supervised training and fine-tuning of a
student need only the inference requirements.
"""
