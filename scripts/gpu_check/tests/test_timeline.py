"""The profile stage's reading of a synthetic --timeline trace."""
import json

from gpu_check import timeline
from gpu_check.tests.util import TempDirCase


def trace(n_steps, first_host_us=100000):
    """n_steps steps of three ops on lane 0 (conv 600 us, pool 300 us, fc 100 us) and the host's
    step spans on lane 2."""
    ev, ts = [], 0
    for s in range(n_steps):
        ev.append({"ph": "X", "pid": 0, "tid": 2, "name": "step", "ts": ts,
                   "dur": first_host_us if s == 0 else 2000 + s})
        for name, cat, dur in (("Relu_3", "Conv2D+BiasAdd+Relu", 600), ("MaxPool_4", "MaxPool2D", 300),
                               ("MatMul_9", None, 100)):
            e = {"ph": "X", "pid": 0, "tid": 0, "name": name, "ts": ts, "dur": dur}
            if cat:
                e["cat"] = cat
            ev.append(e)
            ts += dur
        ev.append({"ph": "X", "pid": 0, "tid": 1, "name": "bucket", "ts": ts, "dur": 5})
    return {"traceEvents": ev[::-1]}  # out of order: the analysis sorts by start


class ProfileTest(TempDirCase):
    def result(self, tr, rc=0, micro=""):
        p = self.write("trace.json", json.dumps(tr))
        return timeline.profile_result(p, rc, 512, self.write("micro.log", micro))

    def test_per_op_share_after_the_first_ten_steps(self):
        r = self.result(trace(30))
        self.assertEqual(r["status"], "PASS")
        self.assertEqual(r["summary"], "CNN batch 512, 1.00 ms of ops per step: Conv2D+BiasAdd+Relu 60%, MaxPool2D 30%, "
                                       "MatMul_9 10%; first step 100 ms, steps 2-10 18 ms, later 2.02 ms each (traced)")
        self.assertEqual(r["per_op_us_per_step"], {"Conv2D+BiasAdd+Relu": 600.0, "MaxPool2D": 300.0, "MatMul_9": 100.0})
        self.assertEqual(r["first_step_ms"], 100.0)
        self.assertEqual(list(r), ["status", "summary", "first_step_ms", "steps_2_10_ms", "median_later_ms",
                                   "epilogue_micro", "per_op_us_per_step"])

    def test_a_failed_run_or_a_short_trace(self):
        self.assertEqual(self.result(trace(30), rc=1)["status"], "FAIL")
        r = self.result(trace(8))
        self.assertEqual((r["status"], r["summary"]), ("FAIL", "ringflow exit 0, 0 steps in the trace"))
        r = timeline.profile_result(self.dir + "/missing.json", 124, 512, self.dir + "/none.log")
        self.assertEqual(r["status"], "FAIL")
        self.assertTrue(r["summary"].startswith("ringflow exit 124, no trace ("))

    def test_bare_list_and_no_host_steps(self):
        tr = [e for e in trace(12)["traceEvents"] if e["tid"] != 2]
        r = self.result(tr)
        self.assertEqual(r["status"], "PASS")
        self.assertNotIn("first_step_ms", r)
        self.assertTrue(r["summary"].endswith("MatMul_9 10%"))

    def test_epilogue_micro_lines(self):
        micro = ("layer m n k ...\n"
                 '{"bench":"epilogue_micro","layer":"fc1","m":512,"cublaslt_taken":true,"graph_lt_us":12.34,'
                 '"graph_gemm_bias_us":15.0,"graph_lt_kernels":1,"graph_gemm_bias_kernels":2,"wrong":0}\n'
                 '{"bench":"epilogue_micro","layer":"fc2","m":64,"cublaslt_taken":false,"wrong":1}\n'
                 '{"bench":"epilogue_micro", broken\n')
        r = self.result(trace(30), micro=micro)
        self.assertTrue(r["summary"].endswith("; epilogue_micro graph us, cuBLASLt/gemm+bias (kernels): "
                                              "fc1/512 12.3/15.0 (1/2), fc2/64 cuBLASLt not taken WRONG"))
        self.assertEqual(len(r["epilogue_micro"]), 2)
