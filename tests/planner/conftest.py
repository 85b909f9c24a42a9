"""The planner tests share the runtime tests' small models (tests/distributed/train_models.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "distributed"))
