"""Unit tests of the gpu_check package (stdlib unittest; ctest runs them as gpu_check_py):
python3 -m unittest discover -s scripts/gpu_check/tests -t scripts"""
