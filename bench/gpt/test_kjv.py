"""Unit tests of kjv.py (data order) and safetensors_io.py; no torch needed.

  /usr/bin/python3 -B -m unittest discover -s bench/gpt

The expected numbers marked "C++" were printed by a small program built against ringflow's own
models/dataset.cpp (std::mt19937_64 of libstdc++, and BatchIterator itself), so they pin the
Python code to what the C++ trainer does, not to itself.
"""
import os
import random
import struct
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kjv  # noqa: E402
import safetensors_io as st  # noqa: E402


class MersenneTwister(unittest.TestCase):
    def test_standard_10000th_value(self):
        # C++11 [rand.predef]: the 10000th invocation of a default-constructed mt19937_64.
        r = kjv.MT19937_64()
        r.discard(9999)
        self.assertEqual(r(), 9981545732273789042)

    def test_against_libstdcxx(self):
        # C++: first three outputs, then the 10000th, for several seeds (incl. 0 and 2^64 - 1).
        cases = {
            0: ([2947667278772165694, 18301848765998365067, 729919693006235833], 16335088777103562557),
            1: ([2469588189546311528, 2516265689700432462, 8323445853463659930], 12541479624422949620),
            42: ([13930160852258120406, 11788048577503494824, 13874630024467741450], 9487037760323427527),
            5489: ([14514284786278117030, 4620546740167642908, 13109570281517897720], 9981545732273789042),
            2**64 - 1: ([478026398904862820, 13243134898385798468, 709236020254955927], 898929940823410802),
        }
        for seed, (first, tenk) in cases.items():
            r = kjv.MT19937_64(seed)
            self.assertEqual([r(), r(), r()], first, seed)
            r.discard(9996)
            self.assertEqual(r(), tenk, seed)

    def test_outputs_are_64_bit(self):
        r = kjv.MT19937_64(7)
        self.assertTrue(all(0 <= r() < 2**64 for _ in range(1000)))


class Bounded(unittest.TestCase):
    class Scripted:
        """An rng that returns the given draws in order."""

        def __init__(self, draws):
            self.draws = list(draws)

        def __call__(self):
            return self.draws.pop(0)

    def test_rejects_below_threshold(self):
        # r = 3: 2^64 mod 3 = 1, so a draw of 0 is rejected and the next one is used.
        self.assertEqual((1 << 64) % 3, 1)
        rng = self.Scripted([0, 5])
        self.assertEqual(kjv.bounded(rng, 3), 5 % 3)
        self.assertEqual(rng.draws, [])
        # 2^64 - 1 is accepted: (2^64 - 1) mod 3 = 0.
        self.assertEqual(kjv.bounded(self.Scripted([2**64 - 1]), 3), 0)

    def test_power_of_two_never_rejects(self):
        rng = self.Scripted([0, 9])
        self.assertEqual(kjv.bounded(rng, 8), 0)
        self.assertEqual(rng.draws, [9])

    def test_range_one_and_bad_range(self):
        r = kjv.MT19937_64(3)
        self.assertTrue(all(kjv.bounded(r, 1) == 0 for _ in range(10)))
        with self.assertRaises(ValueError):
            kjv.bounded(r, 0)

    def test_in_range_and_covers_it(self):
        r = kjv.MT19937_64(11)
        seen = {kjv.bounded(r, 10) for _ in range(2000)}
        self.assertEqual(seen, set(range(10)))


class Permutation(unittest.TestCase):
    def test_is_a_permutation(self):
        for n in (1, 2, 3, 10, 1000, 31938):
            p = kjv.permutation(n, 42)
            self.assertEqual(sorted(p), list(range(n)), n)

    def test_seeds_differ_and_repeat(self):
        self.assertEqual(kjv.permutation(500, 9), kjv.permutation(500, 9))
        self.assertNotEqual(kjv.permutation(500, 9), kjv.permutation(500, 10))

    def test_against_batch_iterator(self):
        # C++: BatchIterator(n=1000, batch=7, seed=5).shard() (epoch 0, one rank).
        p = kjv.permutation(1000, 5)
        self.assertEqual(p[:10], [811, 494, 700, 262, 825, 61, 123, 38, 590, 891])
        self.assertEqual(p[999], 342)


class DataOrder(unittest.TestCase):
    def test_against_batch_iterator(self):
        # C++: BatchIterator(n=1000, batch=7, seed=42, rank, world).start_epoch(2), two batches.
        one = kjv.DataOrder(1000, 7, 42, world=1)
        self.assertEqual(one.steps_per_epoch, 142)
        self.assertEqual(one.windows(2 * 142) + one.windows(2 * 142 + 1),
                         [697, 505, 650, 919, 115, 315, 947, 147, 229, 763, 558, 392, 175, 126])
        three = kjv.DataOrder(1000, 7, 42, world=3)
        self.assertEqual(three.steps_per_epoch, 47)
        expect = {0: [697, 919, 947, 763, 175, 77, 855, 848, 241, 13, 634, 730, 162, 658],
                  1: [505, 115, 147, 558, 126, 53, 771, 572, 386, 12, 371, 158, 843, 761],
                  2: [650, 315, 229, 392, 654, 314, 925, 298, 156, 463, 127, 766, 5, 26]}
        for rank, want in expect.items():
            self.assertEqual(three.windows(94, rank) + three.windows(95, rank), want, rank)

    def test_ranks_together_read_the_one_rank_batch(self):
        for n, b, P, seed in [(1000, 4, 2, 1), (1001, 3, 4, 7), (31938, 8, 4, 42), (50, 1, 5, 3)]:
            one = kjv.DataOrder(n, b * P, seed, world=1)
            many = kjv.DataOrder(n, b, seed, world=P)
            self.assertEqual(one.steps_per_epoch, many.steps_per_epoch)
            spe = one.steps_per_epoch
            for step in (0, 1, spe - 1, spe, spe + 1, 3 * spe + 2):
                joined = [w for r in range(P) for w in many.windows(step, r)]
                self.assertEqual(len(joined), b * P)
                self.assertEqual(sorted(joined), sorted(one.windows(step)), (n, b, P, step))
                # GPT.md: step s of the P ranks reads perm[s b P .. (s+1) b P) of its epoch.
                e, s = divmod(step, spe)
                self.assertEqual(one.windows(step), kjv.permutation(n, seed + e)[s * b * P:(s + 1) * b * P])

    def test_epoch_visits_each_window_once_and_drops_the_tail(self):
        o = kjv.DataOrder(103, 10, 5)
        self.assertEqual(o.steps_per_epoch, 10)
        seen = [w for s in range(10) for w in o.windows(s)]
        self.assertEqual(len(set(seen)), 100)
        self.assertEqual(set(seen) | set(kjv.permutation(103, 5)[100:]), set(range(103)))
        # The next epoch reshuffles with seed + 1.
        self.assertEqual(o.windows(10), kjv.permutation(103, 6)[:10])

    def test_batch_too_large(self):
        with self.assertRaises(ValueError):
            kjv.DataOrder(10, 6, 0, world=2)


class Windows(unittest.TestCase):
    def test_windows(self):
        t = list(range(10))
        self.assertEqual(kjv.n_windows(10, 3), 3)  # (10 - 1) // 3
        self.assertEqual(kjv.n_windows(9, 3), 2)   # the last window needs one more target
        self.assertEqual(kjv.n_windows(1, 3), 0)
        self.assertEqual(kjv.window(t, 0, 3), [0, 1, 2, 3])
        self.assertEqual(kjv.window(t, 2, 3), [6, 7, 8, 9])


class Schedule(unittest.TestCase):
    def test_lr(self):
        self.assertEqual(kjv.lr_at(1), 1e-3 * (1 / 200))
        self.assertEqual(kjv.lr_at(100), 1e-3 * 0.5)
        self.assertEqual(kjv.lr_at(200), 1e-3)
        self.assertEqual(kjv.lr_at(800), 1e-3 * 0.5)
        self.assertAlmostEqual(kjv.lr_at(201), 1e-3 * (200 / 201) ** 0.5, places=18)
        with self.assertRaises(ValueError):
            kjv.lr_at(0)


class Split(unittest.TestCase):
    def test_rule(self):
        test = [k for k in range(1189) if kjv.is_test_chapter(k)]
        self.assertEqual(len(test), 59)
        self.assertEqual(test[:3], [19, 39, 59])
        self.assertEqual(test[-1], 1179)

    def test_chapter_split_on_a_small_text(self):
        text = (b"\nGenesis 1\n\n  1 In the beginning.\n\nnot a header line\n"
                b"\nSong of Solomon 2\n\n  1 I am.\n\n1 Kings 3\n\n  1 And.\n\nRevelation 22\n")
        ch = kjv.split_chapters(text)
        self.assertEqual(b"".join(ch), text)
        self.assertEqual([c.split(b"\n")[1] for c in ch],
                         [b"Genesis 1", b"Song of Solomon 2", b"1 Kings 3", b"Revelation 22"])
        # Header-like lines not after an empty line, or not matching, start nothing.
        self.assertEqual(len(kjv.split_chapters(b"\nGenesis 1\nExodus 2\n\n4 Kings 1\n\ngenesis 3\n")), 1)
        with self.assertRaises(kjv.CorpusError):
            kjv.split_chapters(b"Genesis 1\n")


@unittest.skipUnless(any(os.path.isfile(p) for p in kjv.CANDIDATES) or os.environ.get("KJV"),
                     "the KJV corpus is not staged")
class RealCorpus(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = kjv.Corpus()

    def test_counts(self):
        c = self.c
        self.assertEqual(len(c.text), kjv.EXPECTED_BYTES)
        self.assertEqual(len(c.chapters), 1189)
        self.assertEqual(len(c.vocab), 73)
        self.assertEqual(c.vocab[:2], b"\n ")
        self.assertEqual(len(c.train) + len(c.test), len(c.text))
        self.assertTrue(c.chapters[0].startswith(b"\nGenesis 1\n"))
        self.assertTrue(c.chapters[19].startswith(b"\nGenesis 20\n"))
        self.assertTrue(c.test.startswith(b"\nGenesis 20\n"))
        self.assertTrue(c.chapters[-1].startswith(b"\nRevelation 22\n"))
        self.assertEqual(c.decode(c.encode(c.test[:500])), c.test[:500])

    def test_wrong_file_fails_with_one_line(self):
        with tempfile.NamedTemporaryFile(suffix=".txt") as f:
            f.write(self.c.text[:-1])
            f.flush()
            with self.assertRaises(kjv.CorpusError) as e:
                kjv.Corpus(f.name)
            self.assertIn("not the corpus GPT.md specifies", str(e.exception))
            self.assertNotIn("\n", str(e.exception))
            # Same length, one byte changed: caught by the checksum.
            f.seek(0)
            f.write(self.c.text[:-2] + b",\n")  # "Amen." -> "Amen,"
            f.flush()
            with self.assertRaises(kjv.CorpusError) as e:
                kjv.Corpus(f.name)
            self.assertIn("sha256", str(e.exception))
        with self.assertRaises(kjv.CorpusError):
            kjv.Corpus("/nonexistent/kjv.txt")


class Safetensors(unittest.TestCase):
    def tensors(self):
        rnd = random.Random(0)
        f64 = [rnd.gauss(0, 1) for _ in range(6)]
        f32 = [rnd.gauss(0, 1) for _ in range(3)]
        return [("b.weight", "F64", [2, 3], struct.pack("<6d", *f64)),
                ("a", "F32", [3], struct.pack("<3f", *f32)),
                ("empty", "F32", [0, 4], b"")]

    def test_round_trip(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x.safetensors")
            st.write(path, self.tensors(), {"heads": "4"})
            got, meta = st.read(path)
        self.assertEqual(meta, {"heads": "4"})
        self.assertEqual(list(got), ["b.weight", "a", "empty"])
        for name, dtype, shape, data in self.tensors():
            self.assertEqual(got[name], (dtype, shape, data))

    def test_layout_as_ringflow_writes_it(self):
        raw = st.dumps(self.tensors())
        (n,) = struct.unpack("<Q", raw[:8])
        self.assertEqual((8 + n) % 8, 0)  # data starts 8-byte aligned
        self.assertEqual(len(raw), 8 + n + 48 + 12)  # tensors tile the data, in the given order
        self.assertEqual(raw[8 + n:8 + n + 48], self.tensors()[0][3])

    def test_refuses_bad_input(self):
        with self.assertRaises(st.SafetensorsError):
            st.dumps([("a", "F32", [2], b"\0" * 4)])  # wrong byte count
        with self.assertRaises(st.SafetensorsError):
            st.dumps([("a", "F32", [1], b"\0" * 4), ("a", "F32", [1], b"\0" * 4)])
        with self.assertRaises(st.SafetensorsError):
            st.dumps([("a", "Q8", [1], b"\0")])
        raw = st.dumps(self.tensors())
        with self.assertRaises(st.SafetensorsError):
            st.loads(raw + b"\0")  # trailing bytes
        with self.assertRaises(st.SafetensorsError):
            st.loads(raw[:-1])     # truncated
        with self.assertRaises(st.SafetensorsError):
            st.loads(b"\xff" * 8)


if __name__ == "__main__":
    unittest.main()
