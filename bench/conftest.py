import os
import sys

# Benchmark the installed package (with its compiled _C), not the source tree on sys.path.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _ROOT]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
