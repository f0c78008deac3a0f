"""The SlimDiffSR student network, built from the paper's concepts."""

from backend.model.config import COMPACT_STUDENT, PAPER_STUDENT, PRESETS, StudentConfig
from backend.model.student import SlimDiffSRStudent

__all__ = ["COMPACT_STUDENT", "PAPER_STUDENT", "PRESETS", "SlimDiffSRStudent", "StudentConfig"]
