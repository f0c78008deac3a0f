"""Fine-tuning a student on the user's own imagery (self-supervised degradation).

The loop is the supervised one; what differs is the start (an existing student, release
or ours), the defaults (Real-ESRGAN degradation, small learning rate, a fifth of the files
held out) and a validation before the first step, so the log shows whether the
adaptation improves on the starting model for this imagery.
"""

from __future__ import annotations

from pathlib import Path

from backend.training.trainer import StudentTrainer


class FineTuner(StudentTrainer):
    """The supervised loop, with the starting model validated first (step 0 of val_log.csv)."""

    def run(self, restart: bool = False) -> Path:
        if restart:
            self.forget_earlier_run()
        if not self.checkpoint_path.is_file():
            before = self.validate()
            if before:
                self.append_csv("val_log.csv", {"step": 0, **before})
                self.log("before fine-tuning: " + ", ".join(f"{k} {v:.3f}" for k, v in before.items()))
        return super().run(restart=False)
