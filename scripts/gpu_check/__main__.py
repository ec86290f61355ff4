"""`python3 -m gpu_check ARGS` (scripts/ on PYTHONPATH): what scripts/gpu_check.sh runs."""
import sys

from gpu_check.driver import main

sys.exit(main(sys.argv[1:]))
