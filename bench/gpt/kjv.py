"""The gpt model's data, as docs/GPT.md fixes it: corpus, chapters, split, vocabulary, windows and
the order in which training reads them (std::mt19937_64, bounded(), Fisher-Yates, rank sharding).

Pure Python (no torch, no numpy) so the data order can be checked on its own; gpt_ref.py turns
the token lists into tensors.
"""
import hashlib
import math
import os
import re
import sys

# ---------------------------------------------------------------------------------------------
# Corpus

EXPECTED_BYTES = 4_298_239
EXPECTED_CHAPTERS = 1189
EXPECTED_TEST_CHAPTERS = 59
EXPECTED_VOCAB = 73
# sha256 of `bible gen1:1-rev22:21` from Debian's bible-kjv(-text) 4.x, the file GPT.md names.
EXPECTED_SHA256 = "82fa5f3788c6a9a010fb128a0f0bf588984b5888a82058520620eded59b033ea"

HEADER_RE = re.compile(rb"^([1-3] )?[A-Z][A-Za-z ]* [0-9]+$")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CANDIDATES = (os.path.join(REPO, "data", "kjv", "kjv.txt"), "/tmp/kjv.txt")


class CorpusError(Exception):
    """The file is missing or is not the corpus GPT.md describes (one line of text)."""


def find_corpus(path=None):
    """The corpus path: `path` if given, else $KJV, else data/kjv/kjv.txt, else /tmp/kjv.txt."""
    if path:
        return path
    if os.environ.get("KJV"):
        return os.environ["KJV"]
    for p in CANDIDATES:
        if os.path.isfile(p):
            return p
    raise CorpusError(
        "no KJV corpus: pass --data FILE, set KJV, or run `bible gen1:1-rev22:21 > /tmp/kjv.txt` "
        "(Debian package bible-kjv)")


def chapter_starts(text):
    """Byte offsets where chapters start: an empty line followed by a header line."""
    starts = []
    pos = 0
    n = len(text)
    while pos < n:
        end = text.find(b"\n", pos)
        if end < 0:
            break
        # [pos, end) is a line; it is empty when pos == end.
        if pos == end:
            nxt = text.find(b"\n", end + 1)
            header = text[end + 1: nxt if nxt >= 0 else n]
            if HEADER_RE.match(header):
                starts.append(pos)
        pos = end + 1
    return starts


def split_chapters(text):
    starts = chapter_starts(text)
    if not starts or starts[0] != 0:
        raise CorpusError("the file does not start with a chapter (an empty line, then a header "
                          "like 'Genesis 1')")
    bounds = starts + [len(text)]
    return [text[bounds[i]:bounds[i + 1]] for i in range(len(starts))]


def is_test_chapter(k):
    return k % 20 == 19


class Corpus:
    """text (bytes), chapters, train / test (bytes), vocab (sorted distinct bytes), stoi."""

    def __init__(self, path=None, check=True):
        path = find_corpus(path)
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as e:
            raise CorpusError(f"cannot read the KJV corpus {path}: {e.strerror}") from None
        self.path = path
        self.text = text
        if check and len(text) != EXPECTED_BYTES:
            raise CorpusError(
                f"{path} has {len(text)} bytes, not the {EXPECTED_BYTES} of `bible gen1:1-rev22:21` "
                "(Debian's bible-kjv): not the corpus GPT.md specifies")
        self.chapters = split_chapters(text)
        assert b"".join(self.chapters) == text
        self.train = b"".join(c for k, c in enumerate(self.chapters) if not is_test_chapter(k))
        self.test = b"".join(c for k, c in enumerate(self.chapters) if is_test_chapter(k))
        self.vocab = bytes(sorted(set(text)))
        self.stoi = [-1] * 256
        for i, b in enumerate(self.vocab):
            self.stoi[b] = i
        if check:
            n_test = sum(1 for k in range(len(self.chapters)) if is_test_chapter(k))
            sha = hashlib.sha256(text).hexdigest()
            problems = []
            if len(self.chapters) != EXPECTED_CHAPTERS:
                problems.append(f"{len(self.chapters)} chapters, not {EXPECTED_CHAPTERS}")
            if n_test != EXPECTED_TEST_CHAPTERS:
                problems.append(f"{n_test} test chapters, not {EXPECTED_TEST_CHAPTERS}")
            if len(self.vocab) != EXPECTED_VOCAB:
                problems.append(f"{len(self.vocab)} symbols, not {EXPECTED_VOCAB}")
            if not problems and sha != EXPECTED_SHA256:
                problems.append(f"sha256 {sha}, not {EXPECTED_SHA256}")
            if problems:
                raise CorpusError(f"{path} is not the corpus GPT.md specifies: " + "; ".join(problems))

    def encode(self, data):
        stoi = self.stoi
        return [stoi[b] for b in data]

    def decode(self, ids):
        return bytes(self.vocab[i] for i in ids)


def load_or_exit(path=None, prog="kjv"):
    """Corpus(path), or one `prog: error: ...` line on stderr and exit status 1."""
    try:
        return Corpus(path)
    except CorpusError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
# std::mt19937_64 (C++11 [rand.predef]: mersenne_twister_engine<uint_fast64_t, 64, 312, 156, 31,
# 0xb5026f5aa96619e9, 29, 0x5555555555555555, 17, 0x71d67fffeda60000, 37, 0xfff7eee000000000, 43,
# 6364136223846793005>), default seed 5489.

_MASK64 = (1 << 64) - 1
_N, _M = 312, 156
_UPPER = _MASK64 ^ ((1 << 31) - 1)  # the top 33 bits
_LOWER = (1 << 31) - 1
_A = 0xB5026F5AA96619E9


class MT19937_64:
    def __init__(self, seed=5489):
        mt = [0] * _N
        mt[0] = seed & _MASK64
        for i in range(1, _N):
            prev = mt[i - 1]
            mt[i] = (6364136223846793005 * (prev ^ (prev >> 62)) + i) & _MASK64
        self._mt = mt
        self._out = []  # tempered outputs of the current block, consumed from the end
        self._idx = _N

    def _twist(self):
        mt = self._mt
        for i in range(_N):
            y = (mt[i] & _UPPER) | (mt[(i + 1) % _N] & _LOWER)
            v = mt[(i + _M) % _N] ^ (y >> 1)
            if y & 1:
                v ^= _A
            mt[i] = v
        out = []
        for y in mt:
            y ^= (y >> 29) & 0x5555555555555555
            y ^= (y << 17) & 0x71D67FFFEDA60000
            y ^= (y << 37) & 0xFFF7EEE000000000
            y ^= y >> 43
            out.append(y)
        out.reverse()
        self._out = out

    def __call__(self):
        if not self._out:
            self._twist()
        return self._out.pop()

    def discard(self, z):
        for _ in range(z):
            self()


def bounded(rng, r):
    """ringflow's bounded(): an unbiased value in [0, r) by rejection (draws >= 2^64 mod r)."""
    if r < 1:
        raise ValueError(f"bounded: range must be >= 1, got {r}")
    threshold = (1 << 64) % r
    while True:
        x = rng()
        if x >= threshold:
            return x % r


def permutation(n, seed):
    """BatchIterator's Fisher-Yates from the end with mt19937_64(seed)."""
    perm = list(range(n))
    rng = MT19937_64(seed & _MASK64)
    for i in range(n - 1, 0, -1):
        j = bounded(rng, i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


# ---------------------------------------------------------------------------------------------
# Windows and the data order

def n_windows(n_tokens, T):
    return max(0, (n_tokens - 1) // T)


def window(tokens, w, T):
    """Window w: tokens[wT .. wT + T] (T + 1 ids): inputs the first T, targets the last T."""
    return tokens[w * T: w * T + T + 1]


class DataOrder:
    """Which windows each step of training reads (GPT.md "Data order").

    n_win windows, `batch` windows per rank per step, `world` ranks, base seed `seed`. Epoch e
    uses permutation(n_win, seed + e); rank r's k-th window of the epoch is perm[r + k*world];
    step s (0-based within the epoch) of rank r takes its windows s*batch .. s*batch + batch - 1.
    Steps run on across epochs: global step g is step g % steps_per_epoch of epoch
    g // steps_per_epoch.
    """

    def __init__(self, n_win, batch, seed, world=1):
        if batch < 1 or world < 1:
            raise ValueError("batch and world must be positive")
        self.n_win, self.batch, self.seed, self.world = n_win, batch, seed, world
        self.per_rank = n_win // world
        if batch > self.per_rank:
            raise ValueError(f"batch {batch} is larger than the {self.per_rank} windows per rank")
        self.steps_per_epoch = self.per_rank // batch
        self._epoch = None
        self._perm = None

    def perm(self, epoch):
        if epoch != self._epoch:
            self._perm = permutation(self.n_win, self.seed + epoch)
            self._epoch = epoch
        return self._perm

    def windows(self, step, rank=0):
        """Window indices of global step `step` (0-based) for `rank`, in batch order."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} out of range for world {self.world}")
        epoch, s = divmod(step, self.steps_per_epoch)
        perm = self.perm(epoch)
        return [perm[rank + k * self.world] for k in range(s * self.batch, (s + 1) * self.batch)]


def lr_at(step, peak=1e-3, warmup=200):
    """GPT.md's schedule for step = 1, 2, ...: peak * min(step / warmup, sqrt(warmup / step))."""
    if step < 1:
        raise ValueError(f"the schedule starts at step 1, got {step}")
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1, got {warmup}")
    return peak * min(step / warmup, math.sqrt(warmup / step))
