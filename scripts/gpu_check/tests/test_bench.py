"""The bench stage's summary and the bench table of report.txt."""
import unittest

from gpu_check import bench

ROW = {"model": "mlp", "batch": 64, "ringflow_sps": 120345.6, "ringflow_steady_sps": 130000.4,
       "ringflow_no_graph_steady_sps": 50000.0, "torch_eager_sps": 14000.0, "torch_compile_sps": 20000.0,
       "ratio_eager": 8.596, "ratio_compile": 6.017, "ratio_eager_steady": 9.2857, "ratio_compile_steady": 6.5,
       "no_graph_ratio_eager_steady": 3.571, "graph_over_no_graph_steady": 2.6, "fused_over_unfused_steady": 1.07,
       "ringflow_graph_kernels": 41, "ringflow_unfused_graph_kernels": 47, "notes": []}
CPU_ROW = {"model": "cnn", "batch": 64, "ringflow_sps": 193.57, "ringflow_steady_sps": 311.56, "torch_eager_sps": None,
           "torch_compile_sps": None, "ratio_eager": None, "ratio_eager_steady": None, "ratio_compile": None,
           "ratio_compile_steady": None, "notes": ["torch eager: no result", "ringflow: run 2 failed"]}


class BenchTest(unittest.TestCase):
    def test_summary(self):
        r = bench.bench_result([ROW], 0)
        self.assertEqual(r["status"], "PASS")
        self.assertEqual(r["summary"], "ringflow/torch mlp/64: 9.29x eager, 6.50x compile steady; whole run 8.60x/6.02x "
                                       "(--cuda-graph off: 3.57x eager steady); 41 kernels/step (47 unfused)")
        self.assertEqual(r["rows"], [ROW])

    def test_failure_names_the_first_ringflow_note(self):
        r = bench.bench_result([CPU_ROW], 1)
        self.assertEqual(r["status"], "FAIL")
        self.assertEqual(r["summary"], "ringflow/torch cnn/64: n/a eager, n/a compile steady; whole run n/a/n/a "
                                       "(gpu_vs_torch exit 1: ringflow: run 2 failed)")
        self.assertEqual(bench.bench_result([], 0), {"status": "FAIL", "summary": "no results", "rows": []})

    def test_table(self):
        lines = bench.table_lines([ROW, CPU_ROW])
        self.assertEqual(lines[0], "")
        self.assertEqual(lines[4], "  model batch   ringflow     steady   no-graph      eager    compile rf/eager  "
                                   "rf/comp st/eager  graph   fuse")
        self.assertEqual(lines[5], "  mlp      64     120346     130000      50000      14000      20000    8.596    "
                                   "6.017    9.286  2.600  1.070")
        self.assertEqual(lines[6], "  cnn      64        194        312          -        n/a        n/a      n/a      "
                                   "n/a      n/a      -      -")
        self.assertEqual(bench.table_lines([]), [])
