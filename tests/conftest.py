import os
import sys

# physics_checks.py is a helper module shared by several test files
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MPLBACKEND", "Agg")
