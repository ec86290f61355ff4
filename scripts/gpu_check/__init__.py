"""gpu_check: the stage driver behind scripts/gpu_check.sh, and the analysis of what each stage runs.

Standard library only (a lent GPU machine has no internet and no package manager), Python 3.8 syntax.

  driver.py     the parent: options, pre-flight, one time-boxed process per stage, the report
  stages.py     the stage bodies: the commands each stage runs (build tests diff sanitize bench profile)
  options.py    command line, stage selection, per-stage time limits
  preflight.py  GPU probe, data directory, carried .debs, cuDNN, tool versions
  procs.py      running a command under coreutils `timeout`; a stage's clock; log lines
  buildlog.py   cmake/compiler logs -> the build stage's result
  gtest.py      gtest XML and log -> the tests stage's result (skips on a GPU machine fail it)
  lossdiff.py   per-step loss curves GPU vs CPU -> the diff stage's result (tolerances, f64 control)
  sanitizer.py  compute-sanitizer logs -> the sanitize stage's result
  bench.py      bench/gpu_vs_torch.sh's JSON lines -> the bench stage's result and report table
  timeline.py   a --timeline trace and bench/epilogue_micro's lines -> the profile stage's result
  report.py     stage results -> report.txt / report.json / logs.tar.gz
"""
