"""The SlimDiffSR student network, built from the paper's concepts."""

from backend.model.config import StudentConfig
from backend.model.student import SlimDiffSRStudent

__all__ = ["SlimDiffSRStudent", "StudentConfig"]
