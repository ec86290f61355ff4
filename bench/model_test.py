#!/usr/bin/env python3
"""Unit tests of bench/model.py's math (stdlib unittest, no measurement files needed):
python3 -m unittest discover -s bench -p model_test.py"""
import gzip
import json
import os
import random
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model  # noqa: E402


class Fit(unittest.TestCase):
    def test_recovers_alpha_beta_exactly(self):
        alpha, beta = 25e-6, 8e-9
        rows = [(1.0, m, alpha + m * beta) for m in (8, 512, 4096, 65536, 1 << 20, 16 << 20)]
        for relative in (True, False):
            a, b = model.fit_lstsq(rows, relative)
            self.assertAlmostEqual(a / alpha, 1.0, places=9)
            self.assertAlmostEqual(b / beta, 1.0, places=9)
            self.assertTrue(all(abs(r) < 1e-9 for r in model.residuals(rows, a, b)))

    def test_recovers_from_noisy_data(self):
        rng = random.Random(1)
        alpha, beta = 400e-6, 1e-8
        rows = [(1.0, m, (alpha + m * beta) * (1 + rng.uniform(-0.03, 0.03)))
                for m in [2 ** k for k in range(3, 27)] for _ in range(3)]
        a, b = model.fit_lstsq(rows)
        self.assertLess(abs(a / alpha - 1), 0.05)
        self.assertLess(abs(b / beta - 1), 0.05)

    def test_coefficients_of_an_algorithm(self):
        # rows t = c*alpha + d*beta from a ring of 4 at several sizes recover the link
        alpha, beta = 10e-6, 2e-9
        rows = []
        for s in (4096, 1 << 20, 64 << 20):
            c, d = model.ring_coeffs(s, 4)
            rows.append((c, d, c * alpha + d * beta))
        a, b = model.fit_lstsq(rows)
        self.assertAlmostEqual(a / alpha, 1, places=9)
        self.assertAlmostEqual(b / beta, 1, places=9)

    def test_negative_intercept_is_clamped(self):
        rows = [(1.0, 1000.0, 0.5e-6), (1.0, 2000.0, 2e-6), (1.0, 4000.0, 5e-6)]
        a, b = model.fit_lstsq(rows)
        self.assertEqual(a, 0.0)
        self.assertGreater(b, 0)

    def test_two_stage(self):
        # below the split only latency (a shaper's burst passes at line speed), above it the rate
        alpha, beta, split = 300e-6, 8e-9, 256 * 1024
        rows = [(1.0, m, alpha + m * 1e-11) for m in (8, 64, 4096, 65536)]
        rows += [(1.0, m, alpha + m * beta) for m in (split, 1 << 20, 64 << 20)]
        a, b = model.fit_two_stage(rows, split)
        self.assertLess(abs(a / alpha - 1), 0.01)
        self.assertLess(abs(b / beta - 1), 0.01)


class Formulas(unittest.TestCase):
    def test_ring_at_two(self):
        # 2(n-1) = 2 steps of S/2: two alphas and S bytes through each link
        self.assertEqual(model.ring_coeffs(1000, 2), (2.0, 1000.0))
        # ringflow's two-rank allreduce is the exchange: one alpha, the same S bytes
        self.assertEqual(model.p2p_allreduce_coeffs(1000, 2), (1.0, 1000.0))

    def test_ring_bytes_match_bandwidth_optimum(self):
        for n in (3, 4, 8, 512):
            c, d = model.ring_coeffs(1 << 20, n)
            self.assertEqual(c, 2 * (n - 1))
            self.assertAlmostEqual(d, 2 * (n - 1) / n * (1 << 20))
        self.assertEqual(model.ring_coeffs(123, 1), (0.0, 0.0))

    def test_streams_share_a_link(self):
        c1, d1 = model.ring_coeffs(1 << 20, 4, streams=1)
        c8, d8 = model.ring_coeffs(1 << 20, 4, streams=8)
        self.assertEqual(c1, c8)
        self.assertAlmostEqual(d8, 8 * d1)

    def test_hierarchical_vs_flat(self):
        link = model.Link("x", 5e-6, 1e-9)
        intra = model.IntraNode("ring", model.Link("nv", 0.0, 0.0))  # free intra-node
        net = model.Net(intra, link)
        s = 1 << 24
        # 2 nodes x 2: hierarchical = one exchange of s/2 per local rank, 2 streams on the link
        self.assertAlmostEqual(model.allreduce_time("hier", s, 2, 2, net), 5e-6 + s * 1e-9)
        # flat ring over 4 ranks: 6 steps of s/4, one stream through each node's link
        self.assertAlmostEqual(model.allreduce_time("flat", s, 2, 2, net), 6 * (5e-6 + s / 4 * 1e-9))
        # one rank per node: both are the point-to-point allreduce over the nodes
        self.assertAlmostEqual(model.allreduce_time("hier", s, 3, 1, net), model.allreduce_time("flat", s, 3, 1, net))
        # one NIC per GPU: the hierarchical streams do not share
        net8 = model.Net(intra, model.Link("x", 5e-6, 1e-9, nics=8))
        self.assertAlmostEqual(model.allreduce_time("hier", s, 4, 8, net8), 6 * (5e-6 + s / 8 / 4 * 1e-9))
        self.assertEqual(model.allreduce_time("flat", s, 1, 1, net), 0.0)

    def test_intra_fit_extrapolates(self):
        intra = model.IntraNode("fit", per_g={2: (1e-6, 1e-10)})
        self.assertAlmostEqual(intra.allreduce(1000, 2), 1e-6 + 1e-7)
        self.assertAlmostEqual(intra.half(1000, 2), 0.5 * (1e-6 + 1e-7))
        # G=4 from G=2: per-byte cost scaled by (2*3/4) / (2*1/2) = 1.5, latency by 3
        self.assertAlmostEqual(intra.allreduce(1000, 4), 3e-6 + 1.5e-7)


class Buckets(unittest.TestCase):
    def test_reducer_assignment(self):
        b = model.make_buckets(model.MODELS["cnn"])
        # the first bucket (1 MiB cap) takes fc2 and fc1.bias; fc1.weight opens the second
        self.assertEqual(b[0][0], ["fc2.bias", "fc2.weight", "fc1.bias"])
        self.assertEqual(b[0][1], 4 * (10 + 1280 + 128))
        self.assertEqual(len(b), 2)
        self.assertEqual(sum(x[1] for x in b), 4 * 454922)  # the CNN's 1,819,688 gradient bytes

    def test_small_cap(self):
        b = model.make_buckets([("a", 100, ""), ("b", 100, ""), ("c", 100, "")], bucket_mb=600 / model.MIB,
                               first_bucket_mb=400 / model.MIB)
        self.assertEqual([x[0] for x in b], [["c"], ["b"], ["a"]])


def toy_profile():
    # forward 10, backward: g2 ready at 14, g1 ready at 20; updates 1 each (u2 first)
    ops = [("fwd", 10.0, 0.0), ("bwd2", 4.0, 0.0), ("bwd1", 6.0, 0.0)]
    updates = [("v2", 1.0, 0.0), ("v1", 1.0, 0.0)]
    return model.Profile(ops, updates, {"v1": "bwd1", "v2": "bwd2"})


class Simulation(unittest.TestCase):
    def test_no_communication(self):
        p = toy_profile()
        r = model.simulate(p, [(["v2"], 8), (["v1"], 8)], lambda b, n: 0.0)
        self.assertEqual(r["step"], 22.0)
        self.assertEqual(r["exposed"], 0.0)

    def test_first_bucket_hides_behind_backward(self):
        p = toy_profile()
        # bucket 0 (v2) ready at 14, takes 5: done at 19, hidden behind bwd1 (ends 20), so v2's
        # update runs at once (20-21); bucket 1 ready at 20, takes 5: v1's update 25-26
        r = model.simulate(p, [(["v2"], 8), (["v1"], 8)], lambda b, n: 5.0)
        self.assertEqual(r["buckets"], [(14.0, 14.0, 19.0), (20.0, 20.0, 25.0)])
        self.assertEqual(r["step"], 26.0)
        self.assertEqual(r["exposed"], 4.0)

    def test_communication_thread_is_serial(self):
        p = toy_profile()
        # bucket 0 takes 10 (done at 24): bucket 1 waits for the thread, runs 24-29;
        # v2's update waits for bucket 0 (24), v1's for bucket 1 (29)
        r = model.simulate(p, [(["v2"], 8), (["v1"], 8)], lambda b, n: 10.0 if b == 0 else 5.0)
        self.assertEqual(r["buckets"][1], (20.0, 24.0, 29.0))
        self.assertEqual(r["step"], 30.0)

    def test_one_bucket_no_overlap(self):
        p = toy_profile()
        r = model.simulate(p, [(["v2", "v1"], 16)], lambda b, n: 5.0)
        self.assertEqual(r["step"], 27.0)  # both updates wait for the one bucket (done at 25)

    def test_compression_scales_bytes(self):
        p = toy_profile()
        link = model.Link("x", 0.0, 1.0)  # one second per byte
        net = model.Net(model.IntraNode("ring", link), link)
        buckets = [(["v2"], 2), (["v1"], 4)]
        plain = model.step_time(p, buckets, "flat", 2, 1, net)
        half = model.step_time(p, buckets, "flat", 2, 1, net, model.Compression("fp16", 0.5, 0.25))
        self.assertEqual(plain, 20 + 4 + 1)  # bucket 1: a 4 s exchange, then v1's update
        self.assertEqual(half, 20 + (2 + 1) + 1)  # a 2 s exchange + 4 B * 0.25 s/B


class Profiles(unittest.TestCase):
    def write_trace(self, d, steps=3, wait=0):
        ev = []
        names = [("Conv2DGradFilter_53", "Conv2DGradFilter"), ("BiasAddGrad_52", "BiasAddGrad"),
                 ("Conv2DGradFilter_49", "Conv2DGradFilter"), ("BiasAddGrad_47", "BiasAddGrad"),
                 ("MatMul_43", "MatMul"), ("BiasAddGrad_41", "BiasAddGrad"), ("MatMul_39", "MatMul"),
                 ("BiasAddGrad_37", "BiasAddGrad")]
        for pid, speed in ((0, 1), (1, 2)):
            t = 0
            for k in range(steps):
                start = t
                for n, c in [("fwd", "Conv2D+BiasAdd+Relu")] + list(reversed(names)):
                    ev.append({"ph": "X", "pid": pid, "tid": 0, "name": n, "cat": c, "ts": t, "dur": 10 * speed})
                    t += 10 * speed
                t += wait
                ev.append({"ph": "X", "pid": pid, "tid": 0, "name": "fc2.bias/update", "cat": "ApplyMomentum",
                           "ts": t, "dur": 1})
                t += 1
                ev.append({"ph": "X", "pid": pid, "tid": 2, "name": "step", "cat": "host", "ts": start,
                           "dur": t - start})
                t += 5
        path = os.path.join(d, "t.tl.json.gz")
        with gzip.open(path, "wt") as f:
            json.dump({"traceEvents": ev}, f)
        return path

    def test_profile_from_a_trace(self):
        with tempfile.TemporaryDirectory() as d:
            p = self.write_trace(d)
            prof = model.profile_from_timelines([p], ranks="all")
            self.assertEqual([o[0] for o in prof.ops][0], "fwd")
            self.assertAlmostEqual(prof.total(), 1e-6 * (1.5 * 90 + 1))  # ranks pooled: mean speed 1.5
            slow = model.profile_from_timelines([p], ranks="slowest")
            self.assertAlmostEqual(slow.total(), 1e-6 * (2 * 90 + 1))
            self.assertEqual(slow.updates[0][0], "fc2.bias")

    def test_waits_are_taken_out_of_exchange_runs(self):
        with tempfile.TemporaryDirectory() as d:
            p = self.write_trace(d, wait=50)
            prof = model.profile_from_timelines([p], ranks="step-max")
            self.assertAlmostEqual(prof.total(), 1e-6 * (2 * 90 + 1))

    def test_compact_timeline_round_trip(self):
        with tempfile.TemporaryDirectory() as d:
            p = self.write_trace(d, wait=7)
            model.cmd_compact(type("A", (), {"traces": [p]})())
            c = p.replace(".tl.json.gz", ".tlc.json.gz")
            self.assertTrue(os.path.exists(c))
            for ranks in ("all", "slowest", "step-max"):
                a = model.profile_from_timelines([p], ranks=ranks)
                b = model.profile_from_timelines([c], ranks=ranks)
                self.assertEqual(a.ops, b.ops)
                self.assertEqual(a.updates, b.updates)
                self.assertAlmostEqual(a.total(), b.total())

    def test_renamed_graph_fails_loudly(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x.json")
            with open(path, "w") as f:
                json.dump({"traceEvents": [
                    {"ph": "X", "pid": 0, "tid": 2, "name": "step", "ts": 0, "dur": 10},
                    {"ph": "X", "pid": 0, "tid": 0, "name": "MatMul_99", "cat": "MatMul", "ts": 1, "dur": 2}]}, f)
            with self.assertRaises(ValueError):
                model.profile_from_timelines([path])


class Projection(unittest.TestCase):
    def test_transformer_placeholder_is_what_it_says(self):
        prof, variables, params = model.transformer_profile()
        self.assertAlmostEqual(params / 1e6, 124.4, places=1)
        t = 6 * params * 8192 / (0.4 * 989e12)
        self.assertAlmostEqual(sum(d for _, d, _ in prof.ops), t, places=9)
        # every layer's 28.4 MB of f32 gradient is over the 25 MiB cap: one bucket per layer + embeddings
        self.assertEqual(len(model.make_buckets(variables)), 13)

    def test_efficiency_falls_with_scale_and_hier_beats_flat(self):
        prof, variables, _ = model.transformer_profile()
        buckets = model.make_buckets(variables)
        net = model.Net(model.IntraNode("ring", model.NVLINK), model.IB_LINKS[0][1])
        t1 = model.simulate(prof, buckets, lambda b, n: 0.0)["step"]
        flat = [model.step_time(prof, buckets, "flat", n // 8, 8, net) for n in (16, 512)]
        hier = [model.step_time(prof, buckets, "hier", n // 8, 8, net) for n in (16, 512)]
        self.assertLess(flat[0], flat[1])
        self.assertLessEqual(hier[1], flat[1])
        self.assertGreaterEqual(min(flat + hier), t1)


if __name__ == "__main__":
    unittest.main()
