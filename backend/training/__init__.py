"""How a SlimDiffSR student is made: data, degradations, teacher, pruning, distillation.

Everything here is QGIS-free and optional for inference: the upscale engine never
imports this package. The teacher side needs the extra packages of
``requirements-train.txt`` (diffusers, peft), and so does the Real-ESRGAN degradation
(kornia), the default of ``finetune`` and ``distill``; supervised training and fine-tuning
with the bicubic or sensor degradation need only the inference requirements.
"""
