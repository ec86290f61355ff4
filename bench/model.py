#!/usr/bin/env python3
"""Cost model of ringflow's data-parallel step: alpha-beta links, allreduce algorithms, and a
simulation of one step with the gradient buckets overlapping the backward pass.

Subcommands (all read the measurement files bench/model_data/measure.sh writes; see --help of each):

  fit       least squares t = alpha + m*beta per link class: from bench/p2p_bench's ping-pong rows
            (one message at a time), and from allreduce_bench's rows, where each algorithm's
            formula says how many alphas and betas a size costs (t = c*alpha + d*beta). Prints
            the fits and every row's residual.
  validate  predicts the step time of every measured multi-host training configuration (layout,
            link rate, flat ring or hierarchical, fp16 or not) from the links and a compute
            profile measured in the same layout: A from its --no-gradient-exchange runs, B from
            the compute ops of the run itself (waits taken out); prints measured vs predicted.
            --calibration DIR takes the links and costs from another measurement campaign.
  project   scaling efficiency of the CNN (and a labelled Transformer placeholder) from 8 to 512
            GPUs, 8 per node, NVLink within a node and InfiniBand between nodes (stated public
            figures), flat ring vs hierarchical, with and without fp16; a markdown table and a plot.

The simulation (simulate()): compute ops run back to back as the profile measured them; a
Variable's gradient is ready when the op producing it ends; gradients fill buckets in reverse
forward order (1 MiB first bucket, then --bucket-mb, as collective/reducer.cpp does); a bucket's
allreduce starts when its last gradient is ready and the communication thread has finished the
bucket before it; each update op waits for its own bucket. Step = the end of the last update.

Python 3 standard library only (the plot uses matplotlib when it imports, else a hand-written SVG).
Unit tests: bench/model_test.py. Results and their reading: bench/RESULTS.md, "Cost model:
data-parallel step at scale".
"""
import argparse
import glob
import gzip
import json
import math
import os
import statistics
import sys

MIB = 1024 * 1024

# ----------------------------------------------------------------------------- fitting


def fit_lstsq(rows, relative=True):
    """Least squares for t = c*alpha + d*beta over rows (c, d, t).

    relative: weight each row by 1/t^2 (minimise relative errors, so 8-byte and 64-MiB rows count
    alike); else plain absolute errors. A negative alpha is clamped to 0 and beta refitted.
    Returns (alpha, beta)."""
    if not rows:
        raise ValueError("no rows to fit")
    scc = scd = sdd = sct = sdt = 0.0
    for c, d, t in rows:
        w = 1.0 / (t * t) if relative else 1.0
        scc += w * c * c
        scd += w * c * d
        sdd += w * d * d
        sct += w * c * t
        sdt += w * d * t
    det = scc * sdd - scd * scd
    if abs(det) > 1e-300 * max(1.0, scc * sdd):
        alpha = (sct * sdd - sdt * scd) / det
        beta = (scc * sdt - scd * sct) / det
        if alpha >= 0 and beta >= 0:
            return alpha, beta
    if sdd > 0:  # alpha clamped to 0
        return 0.0, max(0.0, sdt / sdd)
    return max(0.0, sct / scc), 0.0


def fit_two_stage(rows, split):
    """alpha from the rows moving fewer than `split` bytes per link (the latency regime: the
    intercept of their least-squares line), then beta from the others with that alpha fixed
    (relative weights). split 0: fit_lstsq over every row. Rows (c, d, t, ...)."""
    rows = [r[:3] for r in rows]
    if split <= 0:
        return fit_lstsq(rows)
    small = [r for r in rows if r[1] < split]
    large = [r for r in rows if r[1] >= split]
    if not large:
        return fit_lstsq(small)
    alpha = fit_lstsq(small)[0] if len(small) >= 2 else 0.0
    num = sum(d * (t - c * alpha) / (t * t) for c, d, t in large)
    den = sum(d * d / (t * t) for c, d, t in large)
    return alpha, max(0.0, num / den)


def residuals(rows, alpha, beta):
    """Relative residual (predicted - measured) / measured of each row (c, d, t)."""
    return [((c * alpha + d * beta) - t) / t for c, d, t in rows]


class Link:
    """One link class: a message of m bytes costs alpha + m*beta (seconds, seconds per byte)."""

    def __init__(self, name, alpha, beta, nics=1):
        self.name, self.alpha, self.beta, self.nics = name, alpha, beta, nics

    def t(self, m):
        return self.alpha + m * self.beta

    def gbps(self):
        return 8e-9 / self.beta if self.beta > 0 else math.inf

    def __repr__(self):
        return "Link(%s, alpha=%.3g s, beta=%.3g s/B = %.3g Gbit/s)" % (self.name, self.alpha, self.beta, self.gbps())


# ----------------------------------------------------------------------------- allreduce formulas
# Each returns (c, d): the time is c*alpha + d*beta of the link that bounds it.


def ring_coeffs(size, n, streams=1):
    """Bandwidth-optimal ring over n ranks: reduce-scatter then allgather, 2(n-1) steps, each moving
    size/n bytes over every link; `streams` equal rings share each link (bandwidth split)."""
    if n <= 1:
        return 0.0, 0.0
    return 2.0 * (n - 1), 2.0 * (n - 1) * size / n * streams


def exchange_coeffs(size, streams=1):
    """Two ranks' pipelined exchange (collective/README.md): each sends its whole buffer in chunks
    and adds the other's as it arrives: one hop of latency, size bytes each way."""
    return 1.0, size * streams


def p2p_allreduce_coeffs(size, n, streams=1):
    """ringflow's point-to-point allreduce: the exchange between two, the ring from three."""
    if n <= 1:
        return 0.0, 0.0
    if n == 2:
        return exchange_coeffs(size, streams)
    return ring_coeffs(size, n, streams)


def rs_coeffs(size, n):
    """Ring reduce-scatter (or allgather) over n ranks: n-1 steps of size/n."""
    if n <= 1:
        return 0.0, 0.0
    return float(n - 1), (n - 1) * size / n


class IntraNode:
    """Collectives among the G ranks of one node.

    kind 'fit' (this VM's shared memory): allreduce(size, G) = a_G + b_G*size fitted from
    allreduce_bench's ring(shm) rows; the reduce-scatter and the allgather are half of it each.
    A G not measured uses the nearest measured G's per-byte cost scaled by 2(G-1)/G.
    kind 'ring' (NVLink): ring reduce-scatter and allgather over `link`."""

    def __init__(self, kind, link=None, per_g=None):
        self.kind, self.link, self.per_g = kind, link, per_g or {}

    def allreduce(self, size, g):
        if g <= 1:
            return 0.0
        if self.kind == "ring":
            c, d = ring_coeffs(size, g)
            return c * self.link.alpha + d * self.link.beta
        if g in self.per_g:
            a, b = self.per_g[g]
        else:
            g0 = min(self.per_g, key=lambda k: abs(k - g))
            a0, b0 = self.per_g[g0]
            scale = (2.0 * (g - 1) / g) / (2.0 * (g0 - 1) / g0)
            a, b = a0 * (g - 1) / (g0 - 1), b0 * scale
        return a + b * size

    def half(self, size, g):
        """The reduce-scatter (or the allgather) alone."""
        if g <= 1:
            return 0.0
        if self.kind == "ring":
            c, d = rs_coeffs(size, g)
            return c * self.link.alpha + d * self.link.beta
        return 0.5 * self.allreduce(size, g)


class Net:
    """A cluster: N nodes of G ranks, `intra` within a node, `inter` (a Link, per NIC) between."""

    def __init__(self, intra, inter):
        self.intra, self.inter = intra, inter


def allreduce_time(algo, size, nodes, g, net):
    """Seconds for one allreduce of `size` bytes.

    flat: one ring over all nodes*g ranks (ring:p2p); across nodes every step waits for the
      slowest link, the inter-node hop, which carries one stream (the ring enters and leaves each
      node once). On one node: the node's own collective.
    hier: reduce-scatter within the node, then local rank p of every node allreduces slice p
      (size/g) over the nodes, the g streams sharing the node's NICs, then an allgather within
      the node. One rank per node: the point-to-point allreduce over the nodes."""
    n = nodes * g
    if n <= 1 or size <= 0:
        return 0.0
    inter = net.inter
    if nodes == 1:
        return net.intra.allreduce(size, g)
    if algo == "flat":
        c, d = p2p_allreduce_coeffs(size, n)
        return c * inter.alpha + d * inter.beta
    if algo == "hier":
        streams = max(1, math.ceil(g / inter.nics))
        c, d = p2p_allreduce_coeffs(size / g, nodes, streams)
        return net.intra.half(size, g) + c * inter.alpha + d * inter.beta + net.intra.half(size, g)
    raise ValueError("algo must be flat or hier, got %r" % algo)


def allreduce_coeffs(algo, size, nodes, g, nics=1):
    """The inter-node part of allreduce_time as (c, d), for fitting the inter-node link."""
    n = nodes * g
    if algo == "flat":
        return p2p_allreduce_coeffs(size, n)
    return p2p_allreduce_coeffs(size / g, nodes, max(1, math.ceil(g / nics)))


class Compression:
    """A compressor: `ratio` of the bytes are sent; `cost` seconds per uncompressed byte of
    compress + decompress on the communication side (before and after the allreduce)."""

    def __init__(self, name="none", ratio=1.0, cost=0.0):
        self.name, self.ratio, self.cost = name, ratio, cost


NONE = Compression()

# ----------------------------------------------------------------------------- models and buckets

# Variables in forward order: (name, elements, the op whose end makes its gradient ready), as
# ringflow's graph names them today (models/models.cpp; autodiff makes a MatMul's input gradient
# before its weight gradient). A renumbered graph fails loudly in profile_from_timelines().
MODELS = {
    "cnn": [
        ("conv1.weight", 32 * 1 * 5 * 5, "Conv2DGradFilter_53"),
        ("conv1.bias", 32, "BiasAddGrad_52"),
        ("conv2.weight", 64 * 32 * 5 * 5, "Conv2DGradFilter_49"),
        ("conv2.bias", 64, "BiasAddGrad_47"),
        ("fc1.weight", 128 * 3136, "MatMul_43"),
        ("fc1.bias", 128, "BiasAddGrad_41"),
        ("fc2.weight", 10 * 128, "MatMul_39"),
        ("fc2.bias", 10, "BiasAddGrad_37"),
    ],
}


def make_buckets(variables, bucket_mb=25.0, first_bucket_mb=1.0, elem_bytes=4):
    """collective/reducer.cpp's assignment: reverse forward order, a bucket closes when the next
    gradient would take it past its cap (first_bucket_mb for the first, bucket_mb after).
    variables: [(name, elements, ...)]. Returns [(names, bytes)] in launch order."""
    buckets, cur, cur_bytes = [], [], 0
    cap = first_bucket_mb * MIB
    for v in reversed(variables):
        b = v[1] * elem_bytes
        if cur and cur_bytes + b > cap:
            buckets.append((cur, cur_bytes))
            cur, cur_bytes, cap = [], 0, bucket_mb * MIB
        cur.append(v[0])
        cur_bytes += b
    buckets.append((cur, cur_bytes))
    return buckets


# ----------------------------------------------------------------------------- profiles


class Profile:
    """One step's compute as a sequence: head (step start to first op), ops [(name, dur, gap)]
    (gap: idle time before the op), updates [(var, dur, gap)], tail (last op to step end);
    grad_op: Variable -> the op producing its gradient. Seconds."""

    def __init__(self, ops, updates, grad_op, head=0.0, tail=0.0):
        self.ops, self.updates, self.grad_op, self.head, self.tail = ops, updates, grad_op, head, tail

    def total(self):
        return (self.head + sum(d + g for _, d, g in self.ops) + sum(d + g for _, d, g in self.updates) + self.tail)


COMPACT = "ringflow-timeline-compact-1"


def load_json(path):
    """A JSON file (gzipped if .gz); a compact timeline (compact_timeline) comes back expanded."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        d = json.load(f)
    return expand_timeline(d) if isinstance(d, dict) and d.get("format") == COMPACT else d


def compact_timeline(trace):
    """What bench/model.py reads of a --timeline trace, in a third of the bytes: per rank its
    distinct op sequences ([name, category] lists), per step [sequence, step start, head,
    (dur, gap) per op, tail], and its communication spans [name, start, dur]. Lossless for the
    steps, their compute ops and the communication lane (other host spans are dropped)."""
    ev = trace["traceEvents"]
    ranks = {}
    for pid in sorted({e["pid"] for e in ev if e.get("ph") == "X"}):
        seqs, rows = [], []
        for s, t, ops in steps_of(ev, pid):
            seq = [[o["name"], o.get("cat", "")] for o in ops]
            if seq not in seqs:
                seqs.append(seq)
            row, prev = [seqs.index(seq), s, (ops[0]["ts"] - s) if ops else 0], s
            for o in ops:
                row += [o["dur"], o["ts"] - prev]
                prev = o["ts"] + o["dur"]
            rows.append(row + [t - prev])
        comm = [[e["name"], e["ts"], e["dur"]] for e in ev
                if e.get("ph") == "X" and e.get("pid") == pid and e.get("tid") == 1]
        ranks[str(pid)] = {"seqs": seqs, "steps": rows, "comm": comm}
    return {"format": COMPACT, "ranks": ranks}


def expand_timeline(d):
    """compact_timeline's inverse: {"traceEvents": [...]} with the steps, ops and comm spans."""
    ev = []
    for pid_s, r in d["ranks"].items():
        pid = int(pid_s)
        for row in r["steps"]:
            seq, s, head = r["seqs"][row[0]], row[1], row[2]
            t, i = s, 3
            for k, (name, cat) in enumerate(seq):
                dur, gap = row[i], row[i + 1]
                i += 2
                t = (s + head) if k == 0 else t + gap
                ev.append({"ph": "X", "pid": pid, "tid": 0, "name": name, "cat": cat, "ts": t, "dur": dur})
                t += dur
            end = (t if seq else s) + row[i]
            ev.append({"ph": "X", "pid": pid, "tid": 2, "name": "step", "cat": "host", "ts": s, "dur": end - s})
        for name, ts, dur in r["comm"]:
            ev.append({"ph": "X", "pid": pid, "tid": 1, "name": name, "cat": "allreduce", "ts": ts, "dur": dur})
    return {"traceEvents": ev}


UPDATE_CATS = ("ApplyMomentum", "ApplySGD", "ApplyAdam")


def steps_of(events, pid):
    """[(step start, step end, [compute events in it, in time order])] of rank pid."""
    steps = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("ph") == "X" and e.get("pid") == pid and e.get("tid") == 2 and e.get("name") == "step")
    ops = sorted((e for e in events if e.get("ph") == "X" and e.get("pid") == pid and e.get("tid") == 0),
                 key=lambda e: e["ts"])
    out, k = [], 0
    for s, t in steps:
        mine = []
        while k < len(ops) and ops[k]["ts"] < s:
            k += 1
        while k < len(ops) and ops[k]["ts"] < t:
            mine.append(ops[k])
            k += 1
        out.append((s, t, mine))
    return out


def _step_seqs(events, pid, skip):
    """[(head, [(name, cat, dur, gap)], tail)] per step of rank pid (us)."""
    seqs = []
    for s, t, ops in steps_of(events, pid)[skip:]:
        if not ops:
            continue
        seq, prev = [], s
        for e in ops:
            seq.append((e["name"], e.get("cat", ""), e["dur"], max(0, e["ts"] - prev)))
            prev = e["ts"] + e["dur"]
        seqs.append((ops[0]["ts"] - s, seq, max(0, t - prev)))
    return seqs


def _strip_waits(seq):
    """A step of a run with gradient exchange, its waits taken out: the idle time before each
    update op (where it waited for its bucket) is set to 0."""
    return [(n, c, d, 0 if (c in UPDATE_CATS or n.endswith("/update")) else g) for n, c, d, g in seq]


def _seq_total(x):
    h, seq, t = x
    return h + sum(d + g for _, _, d, g in seq) + t


def _profile(seqs, model, stat):
    agg = statistics.mean if stat == "mean" else statistics.median
    names = [x[0] for x in seqs[0][1]]
    seqs = [x for x in seqs if [y[0] for y in x[1]] == names]  # steps that ran the same ops
    us = 1e-6
    ops, updates = [], []
    for i, (name, cat, _, _) in enumerate(seqs[0][1]):
        dur = agg([x[1][i][2] for x in seqs]) * us
        gap = 0.0 if i == 0 else agg([x[1][i][3] for x in seqs]) * us
        if cat in UPDATE_CATS or name.endswith("/update"):
            updates.append((name[:-len("/update")] if name.endswith("/update") else name, dur, gap))
        else:
            ops.append((name, dur, gap))
    grad_op = {v[0]: v[2] for v in MODELS[model]}
    missing = [g for g in grad_op.values() if g not in names]
    if missing:
        raise ValueError("the timeline has no op %s: the graph changed; update MODELS['%s'] in bench/model.py"
                         % (", ".join(missing), model))
    prof = Profile(ops, updates, grad_op, agg([x[0] for x in seqs]) * us, agg([x[2] for x in seqs]) * us)
    if stat != "mean":
        # medians per op add up to less than the median step when the times are skewed (one slow
        # op or another in most steps): keep each op's share, scale to the median step
        want, have = statistics.median(_seq_total(x) for x in seqs) * us, prof.total()
        if have > 0:
            k = want / have
            prof = Profile([(n, d * k, g * k) for n, d, g in ops], [(n, d * k, g * k) for n, d, g in updates],
                           grad_op, prof.head * k, prof.tail * k)
    return prof


def profile_from_timelines(paths, model="cnn", skip=0, stat="mean", ranks="all"):
    """The compute profile of a step from timelines of runs without gradient exchange (or of one
    rank): per position in the step, the `stat` (mean or median) over every step after the first
    `skip`, in seconds.

    ranks='all': pool the steps of every rank of every file. ranks='slowest': per file only the
    rank whose steps took longest (a synchronous step waits for the slowest replica: on a shared
    machine the ranks' cores are not equal, and the no-exchange run lets each go at its own pace),
    pooled over files. ranks='step-max': for timelines of runs WITH gradient exchange (the compute
    measured in the run itself): the waits before update ops are taken out, and step k is the
    rank whose step k computed longest (the ranks are in step there, and each step waits for its
    slowest replica)."""
    pooled = []
    for p in paths:
        ev = load_json(p)["traceEvents"]
        pids = sorted({e["pid"] for e in ev if e.get("ph") == "X"})
        per_rank = [_step_seqs(ev, pid, skip) for pid in pids]
        per_rank = [x for x in per_rank if x]
        if ranks == "slowest" and per_rank:
            per_rank = [max(per_rank, key=lambda seqs: sum(map(_seq_total, seqs)) / len(seqs))]
        elif ranks == "step-max" and per_rank:
            per_rank = [[(h, _strip_waits(seq), 0) for h, seq, _ in x] for x in per_rank]
            n = min(len(x) for x in per_rank)
            per_rank = [[max((x[k] for x in per_rank), key=_seq_total) for k in range(n)]]
        for x in per_rank:
            pooled.extend(x)
    if not pooled:
        raise ValueError("no steps with ops in %s" % ", ".join(paths))
    return _profile(pooled, model, stat)


# ----------------------------------------------------------------------------- simulation


def simulate(profile, buckets, comm_time):
    """One data-parallel step. buckets: [(Variable names, bytes)] in launch order; comm_time(b, bytes)
    -> seconds of bucket b on the communication thread (compression included). Returns a dict:
    step (seconds), backward_end, bucket [(ready, start, end)], exposed (step minus the step
    without communication)."""
    t = profile.head
    end = {}
    for name, dur, gap in profile.ops:
        t += gap + dur
        end[name] = t
    backward_end = t
    var_bucket = {}
    spans, free = [], 0.0
    for bi, (names, nbytes) in enumerate(buckets):
        ready = max(end[profile.grad_op[v]] for v in names)
        start = max(ready, free)
        free = start + comm_time(bi, nbytes)
        spans.append((ready, start, free))
        for v in names:
            var_bucket[v] = bi
    for var, dur, gap in profile.updates:
        t += gap
        if var in var_bucket:
            t = max(t, spans[var_bucket[var]][2])
        t += dur
    step = t + profile.tail
    return {"step": step, "backward_end": backward_end, "buckets": spans, "exposed": step - profile.total()}


def step_time(profile, buckets, algo, nodes, g, net, comp=NONE):
    """Predicted step time (seconds) of a layout under the alpha-beta links of `net`."""
    def comm(_, nbytes):
        if nodes * g <= 1:
            return 0.0
        return allreduce_time(algo, nbytes * comp.ratio, nodes, g, net) + nbytes * comp.cost
    return simulate(profile, buckets, comm)["step"]


# ----------------------------------------------------------------------------- measurement files


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


LAYOUTS = {"1x2": (1, 2), "1x4": (1, 4), "2x1": (2, 1), "2x2": (2, 2), "3x1": (3, 1)}


def p2p_rows(path, link):
    """(1, bytes, one-way seconds) rows of one link class ('local' or 'remote') of a p2p_bench file."""
    return [(1.0, float(r["bytes"]), r["one_way_us"] * 1e-6) for r in read_jsonl(path) if r.get("link") == link]


def fit_intra(data):
    """IntraNode('fit') from ar_1x<G>.jsonl: per G, least squares of the ring(shm) rows."""
    per_g, rows_by_g = {}, {}
    for path in sorted(glob.glob(os.path.join(data, "ar_1x*.jsonl"))):
        g = LAYOUTS[os.path.basename(path)[3:-6]][1]
        rows = [(1.0, float(r["bytes"]), r["time_us"] * 1e-6) for r in read_jsonl(path) if r["backend"] == "ring(shm)"]
        per_g[g] = fit_lstsq(rows)
        rows_by_g[g] = rows
    return IntraNode("fit", per_g=per_g), rows_by_g


def inter_rows(data_rate, intra):
    """Rows (c, d, t, label) of the inter-node link from a rate's allreduce files: each
    algorithm's coefficients, with the hierarchical rows' shared-memory part (fitted) taken off."""
    rows = []
    for path in sorted(glob.glob(os.path.join(data_rate, "ar_*.jsonl"))):
        lay = os.path.basename(path)[3:-6]
        nodes, g = LAYOUTS[lay]
        for r in read_jsonl(path):
            b = r["backend"]
            if b in ("ring(p2p)", "ring(hier)"):
                algo = "flat" if b == "ring(p2p)" else "hier"
                if algo == "hier" and g == 1:
                    continue
                size, t = float(r["bytes"]), r["time_us"] * 1e-6
                if algo == "hier":
                    t -= 2 * intra.half(size, g)
                c, d = allreduce_coeffs(algo, size, nodes, g)
                if t > 0:
                    rows.append((c, d, t, "%s %s %d" % (lay, b, r["bytes"])))
    return rows


# The inter-node fits take alpha from the rows moving fewer bytes per link than this and beta from
# the rest: the shaper (tbf) lets a burst of 256 KiB through at the veth's own speed, so a small
# message sees the latency but not the shaped rate, and one line through both regimes fits neither.
INTER_SPLIT_BYTES = 256 * 1024


def fit_links(data, rate, source="allreduce"):
    """Fitted links of one rate: {'intra': IntraNode, 'inter': Link, 'p2p_local': Link,
    'p2p_remote': Link, 'ar_remote': Link}; inter is the allreduce fit (source='allreduce') or
    the ping-pong one ('p2p')."""
    intra, _ = fit_intra(data)
    out = {"intra": intra}
    local = os.path.join(data, "p2p_local.jsonl")
    if os.path.exists(local):
        out["p2p_local"] = Link("intra p2p", *fit_lstsq(p2p_rows(local, "local")))
    rd = os.path.join(data, rate)
    pr = os.path.join(rd, "p2p.jsonl")
    if os.path.exists(pr):
        out["p2p_remote"] = Link("inter p2p " + rate, *fit_two_stage(p2p_rows(pr, "remote"), INTER_SPLIT_BYTES))
    rows = inter_rows(rd, intra)
    if rows:
        out["ar_remote"] = Link("inter allreduce " + rate, *fit_two_stage(rows, INTER_SPLIT_BYTES))
    out["inter"] = out["ar_remote"] if source == "allreduce" and "ar_remote" in out else out["p2p_remote"]
    return out


def rates_in(data):
    return sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)) and d.endswith("bit"))


# ----------------------------------------------------------------------------- fit command


def cmd_fit(a):
    print("# Link fits, t(m) = alpha + m*beta, least squares on relative error (data: %s)" % a.data)
    intra, rows_by_g = fit_intra(a.data)
    fits = []  # (name, rows, fewest bytes per link a fitted row moves)
    local = os.path.join(a.data, "p2p_local.jsonl")
    if os.path.exists(local):
        fits.append(("intra-node p2p (ping-pong, shared memory)", p2p_rows(local, "local"), 0))
    for rate in rates_in(a.data):
        pr = os.path.join(a.data, rate, "p2p.jsonl")
        if os.path.exists(pr):
            fits.append(("inter-node p2p %s (ping-pong, TCP)" % rate, p2p_rows(pr, "remote"), INTER_SPLIT_BYTES))
    for g, rows in sorted(rows_by_g.items()):
        fits.append(("intra-node allreduce ring(shm), G=%d (whole allreduce: a + S*b)" % g, rows, 0))
    for rate in rates_in(a.data):
        rows = inter_rows(os.path.join(a.data, rate), intra)
        if rows:
            fits.append(("inter-node %s from allreduce (c*alpha + d*beta per algorithm)" % rate, rows,
                         INTER_SPLIT_BYTES))
    print("| class | alpha (us) | beta (ns/B) | bandwidth (Gbit/s) | rows | median abs residual, rows below / "
          "above the split | max abs residual below / above |")
    print("|---|---|---|---|---|---|---|")
    details = []

    def med_max(xs):
        return ("%.0f%%" % (100 * statistics.median(xs)), "%.0f%%" % (100 * max(xs))) if xs else ("-", "-")
    for name, rows, min_d in fits:
        al, be = fit_two_stage(rows, min_d)
        res = residuals([r[:3] for r in rows], al, be)
        lo = med_max([abs(x) for r, x in zip(rows, res) if r[1] < min_d])
        hi = med_max([abs(x) for r, x in zip(rows, res) if r[1] >= min_d])
        print("| %s | %.2f | %.4f | %.3f | %d (split %d B) | %s / %s | %s / %s |" % (
            name, al * 1e6, be * 1e9, 8e-9 / be if be else float("inf"), len(rows), min_d, lo[0], hi[0], lo[1], hi[1]))
        details.append((name, rows, al, be, res, min_d))
    if a.residuals:
        for name, rows, al, be, res, min_d in details:
            print("\n## %s\n| row | c | d (B) | measured (us) | fit (us) | residual |" % name)
            print("|---|---|---|---|---|---|")
            for r, x in zip(rows, res):
                label = r[3] if len(r) > 3 else "%d B" % r[1]
                print("| %s%s | %g | %.0f | %.1f | %.1f | %+.0f%% |" % (
                    label, "" if r[1] >= min_d else " (alpha)", r[0], r[1], r[2] * 1e6,
                    (r[0] * al + r[1] * be) * 1e6, 100 * x))
    return 0


# ----------------------------------------------------------------------------- validate command

# Measured configurations: name -> (layout, algo, compression name)
CONFIGS = [
    ("2x1_ring", "2x1", "flat", "none"),
    ("2x1_fp16", "2x1", "flat", "fp16"),
    ("2x2_hier", "2x2", "hier", "none"),
    ("2x2_p2p", "2x2", "flat", "none"),
    ("2x2_fp16", "2x2", "hier", "fp16"),
    ("3x1_ring", "3x1", "flat", "none"),
]


def summaries(pattern):
    out = []
    for p in sorted(glob.glob(pattern)):
        try:
            s = read_jsonl(p)
        except (OSError, ValueError):
            continue
        s = [x for x in s if "train_seconds" in x]
        if s and s[-1]["steps"] > 0:
            out.append((p, s[-1]))
    return out


def ms_per_step(summary):
    return 1e3 * summary["train_seconds"] / summary["steps"]


def fp16_cost(data):
    """Seconds per uncompressed byte of fp16 compress + decompress: from a one-host two-rank fp16
    run's timeline (compress_fp16_1x2_r*.json.tl*): each bucket's span minus the fitted
    shared-memory allreduce of the compressed bytes, over the bucket's bytes. 0 without the file."""
    paths = sorted(glob.glob(os.path.join(data, "compress_fp16_1x2*.json.tl*")))
    if not paths:
        return 0.0, 0
    intra, _ = fit_intra(data)
    per_byte = []
    for p in paths:
        for e in load_json(p)["traceEvents"]:
            n = e.get("name", "")
            if e.get("tid") == 1 and n.startswith("fp16 bucket") and "(" in n:
                b = int(n.split("(")[1].split()[0])
                if b > 64 * 1024:
                    per_byte.append(max(0.0, e["dur"] * 1e-6 - intra.allreduce(b / 2, 2)) / b)
    return (statistics.median(per_byte) if per_byte else 0.0), len(per_byte)


def step_spans_ms(path, pid=0):
    """Durations (ms) of rank pid's step spans (Session::run) in a timeline."""
    return [e["dur"] * 1e-3 for e in load_json(path)["traceEvents"]
            if e.get("ph") == "X" and e.get("pid") == pid and e.get("tid") == 2 and e.get("name") == "step"]


def training_allreduce_seconds(paths, bucket=1):
    """How long bucket `bucket`'s allreduce took inside training runs with gradient exchange: per
    step the shortest of the ranks' spans (launch to done: the rank that launched last waited
    least for the others), the median over steps and runs. The CNN's bucket 1 (1.81 MB) is
    launched at the end of the backward pass, so its span is the allreduce itself."""
    per_step = []
    tag = "bucket %d (" % bucket
    for p in paths:
        per = {}
        for e in load_json(p)["traceEvents"]:
            if e.get("ph") == "X" and e.get("tid") == 1 and tag in e.get("name", ""):
                per.setdefault(e["pid"], []).append(e["dur"] * 1e-6)
        if per:
            n = min(len(v) for v in per.values())
            per_step += [min(v[k] for v in per.values()) for k in range(n)]
    return statistics.median(per_step) if per_step else None


def training_link(data, rate, bench, model="cnn", bucket_mb=25.0):
    """The inter-node link as a training run sees it: the allreduce fit's alpha, and the beta that
    makes the two-host exchange (2x1, no compression) take as long as bucket 1's measured
    allreduce inside those runs (one point, one unknown)."""
    paths = sorted(glob.glob(os.path.join(data, rate, "train_2x1_ring_r*.json.tl*")))
    t = training_allreduce_seconds(paths)
    if t is None:
        return None
    size = make_buckets(MODELS[model], bucket_mb)[1][1]
    c, d = allreduce_coeffs("flat", size, 2, 1)
    return Link("inter in training " + rate, bench.alpha, max(0.0, (t - c * bench.alpha) / d))


def cores_of(data):
    """The cores of the machine the data were measured on (machine.json, else this machine's)."""
    try:
        with open(os.path.join(data, "machine.json")) as f:
            return int(json.load(f)["cores"])
    except (OSError, ValueError, KeyError):
        return os.cpu_count() or 1


def cpu_share(ranks, cores, ranks_then=None):
    """How much slower CPU work of one rank runs with `ranks` ranks on `cores` cores than it ran
    when measured with `ranks_then` (ranks that outnumber the cores share them)."""
    now = max(1.0, ranks / cores)
    return now / max(1.0, (ranks_then or 1) / cores)


def validate_rows(data, model="cnn", source="training", bucket_mb=25.0, ranks="step-max", stat="median", cal=None):
    """One dict per measured configuration (layout, rate, algorithm, compression): measured and
    predicted ms per step, and the parts. stat 'median': a run's step time is the median of rank
    0's step spans, the profiles take medians per op; 'mean': train_seconds/steps and means. Per
    run a prediction; the medians over runs are compared. cal: the folder whose measurements give
    the links, the fp16 cost and the training calibration (default: data itself)."""
    cal = cal or data
    cost, _ = fp16_cost(cal)
    cores = cores_of(cal)
    buckets = make_buckets(MODELS[model], bucket_mb)
    rows = []
    for rate in rates_in(data):
        rd = os.path.join(data, rate)
        if not os.path.isdir(os.path.join(cal, rate)):
            continue
        links = fit_links(cal, rate, "p2p" if source == "p2p" else "allreduce")
        base = links["inter"]
        if source == "training":
            calibrated = training_link(cal, rate, links["ar_remote"], model, bucket_mb)
            if calibrated is None:
                continue
        for name, lay, algo, comp in CONFIGS:
            nodes, g = LAYOUTS[lay]
            # CPU work of a rank (fp16's conversions, measured with 2 ranks on one host) takes longer
            # where the ranks outnumber the cores
            share = cpu_share(nodes * g, cores, 2)
            comps = {"none": NONE, "fp16": Compression("fp16", 0.5, cost * share)}
            inter = base
            if source == "training":
                # the calibrated link's extra time per byte over the allreduce_bench fit is the
                # communication thread waiting for a core: it grows with the ranks per core
                extra = max(0.0, calibrated.beta - base.beta) * cpu_share(nodes * g, cores, 2)
                inter = Link(calibrated.name, calibrated.alpha, base.beta + extra)
            net = Net(links["intra"], inter)
            own = sorted(glob.glob(os.path.join(rd, "train_%s_r*.json.tl*" % name)))
            tls = sorted(glob.glob(os.path.join(rd, "train_%s_nx_r*.json.tl*" % lay)))
            runs = summaries(os.path.join(rd, "train_%s_r*.json" % name))
            if not own or not tls:
                continue
            c = comps[comp]
            if stat == "median":
                measured = [statistics.median(step_spans_ms(t)) for t in own]
                nx_ms = statistics.median(statistics.median(step_spans_ms(t)) for t in tls)
            else:
                measured = [ms_per_step(x) for _, x in runs]
                nx_ms = statistics.median(ms_per_step(x) for _, x in summaries(os.path.join(rd, "train_%s_nx_r*.json" % lay)))
            # compute from each no-exchange run (its slowest rank), and from each run itself
            profs = [profile_from_timelines([t], model, stat=stat, ranks=ranks) for t in tls]
            own_profs = [profile_from_timelines([t], model, stat=stat, ranks="step-max") for t in own]
            preds = [1e3 * step_time(pf, buckets, algo, nodes, g, net, c) for pf in profs]
            own_preds = [1e3 * step_time(pf, buckets, algo, nodes, g, net, c) for pf in own_profs]
            m, pred, pred_own = statistics.median(measured), statistics.median(preds), statistics.median(own_preds)
            comm = 1e3 * sum(allreduce_time(algo, b * c.ratio, nodes, g, net) + b * c.cost for _, b in buckets)
            t_b1 = training_allreduce_seconds(own)
            rows.append({
                "layout": lay, "link": rate, "algo": algo, "compress": comp, "config": name, "stat": stat,
                "inter_link": repr(inter), "measured_ms": m, "measured_runs": measured, "nx_ms": nx_ms,
                "compute_ms": statistics.median(1e3 * pf.total() for pf in profs),
                "comm_ms": comm, "bucket1_model_ms": 1e3 * (allreduce_time(algo, buckets[1][1] * c.ratio, nodes, g, net)
                                                            + buckets[1][1] * c.cost),
                "bucket1_in_training_ms": 1e3 * t_b1 if t_b1 else float("nan"),
                "predicted_ms": pred, "predicted_runs": preds, "error_pct": 100 * (pred - m) / m,
                "inrun_compute_ms": statistics.median(1e3 * pf.total() for pf in own_profs),
                "predicted_inrun_ms": pred_own, "predicted_inrun_runs": own_preds,
                "error_inrun_pct": 100 * (pred_own - m) / m,
            })
    return rows, cost


def cmd_validate(a):
    rows, cost = validate_rows(a.data, a.model, a.links, a.bucket_mb, a.ranks, a.stat, a.calibration)
    if not rows:
        print("validate: no training runs found under %s (bench/model_data/measure.sh writes them)" % a.data)
        return 1
    if a.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    src = {"allreduce": "allreduce_bench (fit)", "p2p": "p2p_bench ping-pong (fit)",
           "training": "the 2x1 training runs' own bucket-1 allreduce (calibrated)"}[a.links]
    print("# Measured vs predicted ms per step (%s; per run, then the median over runs). Compute A: the same"
          " layout's --no-gradient-exchange runs (%s); compute B: the run's own compute ops (its waits taken out,"
          " the slowest rank each step). Inter-node link from %s; fp16 compress+decompress %.3g ns per byte"
          " (2 ranks on one host; times ranks/cores where the ranks outnumber the cores)." % (
              "median step span of rank 0" if a.stat == "median" else "train_seconds / steps",
              {"slowest": "slowest rank", "all": "every rank", "step-max": "per step its slowest rank"}[a.ranks],
              src + ("" if not a.calibration else ", measured in " + a.calibration), cost * 1e9))
    for r in rows:
        print("# %s %s: %s" % (r["link"], r["layout"], r["inter_link"]))
    print("| layout | link | allreduce | compress | measured ms/step | runs | no-exchange ms/step | compute A "
          "| bucket-1 allreduce ms: model / in training | predicted (A) | error | compute B | predicted (B) | error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %s | %s | %s | %.1f | %s | %.1f | %.1f | %.1f / %.1f | %.1f | %+.1f%% | %.1f | %.1f | %+.1f%% |" % (
            r["layout"], r["link"], r["algo"], r["compress"], r["measured_ms"],
            " ".join("%.0f" % x for x in r["measured_runs"]), r["nx_ms"], r["compute_ms"], r["bucket1_model_ms"],
            r["bucket1_in_training_ms"], r["predicted_ms"], r["error_pct"], r["inrun_compute_ms"],
            r["predicted_inrun_ms"], r["error_inrun_pct"]))
    for comp in ("none", "fp16"):
        sel = [r for r in rows if r["compress"] == comp]
        if sel:
            print("\n%s: worst |error| %.1f%% (A), %.1f%% (B) over %d configurations" % (
                "uncompressed" if comp == "none" else comp, max(abs(r["error_pct"]) for r in sel),
                max(abs(r["error_inrun_pct"]) for r in sel), len(sel)))
    return 0


# ----------------------------------------------------------------------------- projection

# Public figures, stated (bench/RESULTS.md "Cost model" repeats them):
#  NVLink 4 (H100 SXM): 900 GB/s bidirectional per GPU = 450 GB/s each way; achievable 80% of it
#    (NCCL's allreduce busbw on 8 H100s is reported around 360-480 GB/s): 360 GB/s per GPU.
#  InfiniBand: 100 / 200 / 400 Gbit/s per node (one NIC shared by the node's 8 GPUs), or NDR
#    400 Gbit/s per GPU (8 NICs per node, DGX H100); achievable 90% of the line rate.
#  alpha: 2 us a step within a node, 5 us a step between nodes.
ACHIEVABLE_NVLINK, ACHIEVABLE_IB = 0.80, 0.90
ALPHA_NVLINK, ALPHA_IB = 2e-6, 5e-6
NVLINK = Link("NVLink 4", ALPHA_NVLINK, 1.0 / (ACHIEVABLE_NVLINK * 450e9))
IB_LINKS = [
    ("IB 100G/node", Link("IB 100", ALPHA_IB, 8.0 / (ACHIEVABLE_IB * 100e9), nics=1)),
    ("IB 200G/node", Link("IB 200", ALPHA_IB, 8.0 / (ACHIEVABLE_IB * 200e9), nics=1)),
    ("IB 400G/node", Link("IB 400", ALPHA_IB, 8.0 / (ACHIEVABLE_IB * 400e9), nics=1)),
    ("NDR 400G/GPU", Link("NDR 400 x8", ALPHA_IB, 8.0 / (ACHIEVABLE_IB * 400e9), nics=8)),
]
# fp16 on a GPU: cast kernels reading 4 and writing 2 bytes per element, then 2 + 4 back: 3 bytes of
# HBM traffic per gradient byte at an assumed 3 TB/s; ratio 0.5.
FP16_GPU = Compression("fp16", 0.5, 3.0 / 3e12)
GPUS = [8, 16, 32, 64, 128, 256, 512]
GPN = 8

# The CNN's H200 profile at batch 512 (bench/RESULTS.md, "CNN step profile at batch 512", seventh
# session: 1.85 ms of ops a step), per op category in microseconds; the rest of the 1.85 ms is
# spread over the other ops in proportion to their CPU time.
H200_CNN_US = {"Conv2DGradFilter": 474, "Conv2D+BiasAdd+Relu": 456, "Conv2DGradInput": 280, "MatMul": 158,
               "ReluGrad": 85, "BiasAddGrad": 84, "MaxPool2DGrad": 81}
H200_CNN_TOTAL_US = 1850


def gpu_cnn_profile(cpu_profile_paths):
    """The CNN on an H200 at batch 512: the order, gaps dropped, of a measured CPU timeline (which
    op makes which gradient), each op category's time from the H200 profile (split within a
    category in proportion to the CPU times), every other op scaled so the step has 1.85 ms of ops."""
    cpu = profile_from_timelines(cpu_profile_paths, "cnn")
    cats = {}
    for p in cpu_profile_paths:
        for e in load_json(p)["traceEvents"]:
            if e.get("tid") == 0 and "cat" in e:
                cats[e["name"]] = e["cat"]
    seq = [(n, d, cats.get(n, ""), False) for n, d, _ in cpu.ops] + \
          [(v, d, "ApplyMomentum", True) for v, d, _ in cpu.updates]
    cat_cpu = {}
    for n, d, c, _ in seq:
        cat_cpu[c] = cat_cpu.get(c, 0.0) + d
    known = sum(H200_CNN_US.values())
    rest_cpu = sum(d for n, d, c, _ in seq if c not in H200_CNN_US)
    rest_scale = (H200_CNN_TOTAL_US - known) * 1e-6 / rest_cpu

    def gpu(d, c):
        return d * (H200_CNN_US[c] * 1e-6 / cat_cpu[c]) if c in H200_CNN_US else d * rest_scale
    ops = [(n, gpu(d, c), 0.0) for n, d, c, u in seq if not u]
    updates = [(n, gpu(d, c), 0.0) for n, d, c, u in seq if u]
    return Profile(ops, updates, cpu.grad_op)


# A Transformer placeholder (ringflow's gpt model has not landed): ASSUMED, not measured.
# GPT-2 small shape: 124M parameters (12 layers of 7.09M; token and position embeddings 39.4M and
# the final norm, tied output head), f32
# gradients; per GPU 8 sequences of 1024 tokens; compute 6 * params * tokens FLOPs at 40% of an
# H100's 989 TFLOP/s dense BF16 (15.4 ms a step), a third forward, two thirds backward, layers
# taking equal time; the embedding gradient is ready last.
TRANSFORMER = {"layers": 12, "layer_params": 7_087_872, "embed_params": 38_597_376 + 786_432 + 1536,
               "tokens": 8 * 1024, "flops_per_s": 0.40 * 989e12}


def transformer_profile(t=TRANSFORMER):
    params = t["layers"] * t["layer_params"] + t["embed_params"]
    total = 6.0 * params * t["tokens"] / t["flops_per_s"]
    fwd, bwd = total / 3, 2 * total / 3
    ops = [("forward", fwd, 0.0)]
    variables = [("embed", t["embed_params"], "bwd_embed")]
    per_layer = bwd / (t["layers"] + 1)
    for k in range(t["layers"]):
        variables.append(("layer%d" % k, t["layer_params"], "bwd_layer%d" % k))
    for k in reversed(range(t["layers"])):
        ops.append(("bwd_layer%d" % k, per_layer, 0.0))
    ops.append(("bwd_embed", per_layer, 0.0))
    # the update: one fused pass over the parameters (16 B per parameter at 3 TB/s)
    updates = [(v[0], v[1] * 16 / 3e12, 0.0) for v in reversed(variables)]
    return Profile(ops, updates, {v[0]: v[2] for v in variables}), variables, params


def projection(cnn_paths, bucket_mb=25.0):
    """{model: {(link name, algo, compression): [(gpus, step s, efficiency)]}} and the 1-GPU steps."""
    models = {}
    cnn = gpu_cnn_profile(cnn_paths)
    models["CNN (H200 batch 512)"] = (cnn, make_buckets(MODELS["cnn"], bucket_mb))
    tp, tvars, _ = transformer_profile()
    models["Transformer placeholder (assumed, 124M)"] = (tp, make_buckets(tvars, bucket_mb))
    out, base = {}, {}
    for mname, (prof, buckets) in models.items():
        t1 = simulate(prof, buckets, lambda b, n: 0.0)["step"]
        base[mname] = t1
        res = {}
        for lname, link in IB_LINKS:
            net = Net(IntraNode("ring", NVLINK), link)
            for algo in ("flat", "hier"):
                for comp in (NONE, FP16_GPU):
                    pts = []
                    for n in GPUS:
                        t = step_time(prof, buckets, algo, n // GPN, GPN, net, comp)
                        pts.append((n, t, t1 / t))
                    res[(lname, algo, comp.name)] = pts
        out[mname] = res
    return out, base


def cmd_project(a):
    cnn_paths = sorted(glob.glob(os.path.join(a.data, "train_1x1_r*.json.tl*")))
    if not cnn_paths:
        print("project: no one-rank CNN timeline (train_1x1_r*.json.tl.json.gz) under %s" % a.data)
        return 1
    out, base = projection(cnn_paths, a.bucket_mb)
    print("# Projected scaling efficiency = step(1 GPU) / step(N GPUs), same per-GPU batch; %d GPUs per node,"
          " NVLink 4 at %.0f GB/s achievable (alpha %.0f us); IB alpha %.0f us, %.0f%% of line rate" % (
              GPN, 1e-9 / NVLINK.beta, ALPHA_NVLINK * 1e6, ALPHA_IB * 1e6, 100 * ACHIEVABLE_IB))
    short = {"IB 100G/node": "100/node", "IB 200G/node": "200/node", "IB 400G/node": "400/node",
             "NDR 400G/GPU": "400/GPU"}
    print("Columns: InfiniBand Gbit/s per node (one NIC for 8 GPUs) or per GPU (8 NICs), flat ring (F) or"
          " hierarchical (H), +16 = fp16 compression.")
    for mname, res in out.items():
        print("\n## %s: 1 GPU step %.2f ms\n" % (mname, base[mname] * 1e3))
        cols = [(l, al, c) for l, _ in IB_LINKS for al in ("flat", "hier") for c in ("none", "fp16")]
        print("| GPUs | " + " | ".join("%s %s%s" % (short[l], "F" if al == "flat" else "H", "+16" if c == "fp16" else "")
                                      for l, al, c in cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for i, n in enumerate(GPUS):
            print("| %d | " % n + " | ".join("%.2f" % res[k][i][2] for k in cols) + " |")
        print("| ms/step at %d | " % GPUS[-1] + " | ".join("%.2f" % (res[k][-1][1] * 1e3) for k in cols) + " |")
    if a.plot:
        plot(out, base, a.plot)
        print("\nplot: %s" % a.plot)
    return 0


PLOT_LINKS = ("IB 100G/node", "NDR 400G/GPU")
STYLES = {("flat", "none"): ("#d62728", "-"), ("flat", "fp16"): ("#d62728", "--"),
          ("hier", "none"): ("#1f77b4", "-"), ("hier", "fp16"): ("#1f77b4", "--")}


def plot(out, base, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return plot_svg(out, base, path if path.endswith(".svg") else os.path.splitext(path)[0] + ".svg")
    fig, axes = plt.subplots(len(out), len(PLOT_LINKS), figsize=(10, 7.5), sharex=True, sharey=True)
    for i, (mname, res) in enumerate(out.items()):
        for j, lname in enumerate(PLOT_LINKS):
            ax = axes[i][j]
            for (algo, comp), (color, ls) in STYLES.items():
                pts = res[(lname, algo, comp)]
                ax.plot([p[0] for p in pts], [p[2] for p in pts], color=color, linestyle=ls, marker="o", ms=3,
                        label="%s%s" % ("hierarchical" if algo == "hier" else "flat ring", " + fp16" if comp == "fp16" else ""))
            ax.set_xscale("log", base=2)
            ax.set_xticks(GPUS)
            ax.set_xticklabels([str(g) for g in GPUS])
            ax.set_ylim(0, 1.05)
            ax.grid(True, alpha=0.3)
            ax.set_title("%s, %s\n(1 GPU: %.2f ms a step)" % (mname, lname, base[mname] * 1e3), fontsize=9)
            if i == len(out) - 1:
                ax.set_xlabel("GPUs (8 per node, NVLink 4 within)")
            if j == 0:
                ax.set_ylabel("scaling efficiency")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("ringflow cost model (bench/model.py): projected data-parallel scaling", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def plot_svg(out, base, path):
    """The same grid of panels as plot(), as a plain SVG (no matplotlib)."""
    W, H, pw, ph, ml, mt = 900, 640, 380, 230, 70, 60
    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="14" text-anchor="middle">ringflow cost model: projected data-parallel scaling</text>' % (W // 2)]
    lx = lambda n: math.log2(n / GPUS[0]) / math.log2(GPUS[-1] / GPUS[0])
    for i, (mname, res) in enumerate(out.items()):
        for j, lname in enumerate(PLOT_LINKS):
            x0, y0 = ml + j * (pw + 60), mt + i * (ph + 70)
            s.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="black"/>' % (x0, y0, pw, ph))
            s.append('<text x="%d" y="%d" text-anchor="middle">%s, %s (1 GPU %.2f ms)</text>' % (
                x0 + pw // 2, y0 - 6, mname, lname, base[mname] * 1e3))
            for v in (0, 0.25, 0.5, 0.75, 1.0):
                y = y0 + ph - v * ph
                s.append('<text x="%d" y="%.0f" text-anchor="end">%.2f</text>' % (x0 - 4, y + 4, v))
            for n in GPUS:
                x = x0 + lx(n) * pw
                s.append('<text x="%.0f" y="%d" text-anchor="middle">%d</text>' % (x, y0 + ph + 14, n))
            for (algo, comp), (color, ls) in STYLES.items():
                pts = " ".join("%.1f,%.1f" % (x0 + lx(p[0]) * pw, y0 + ph - min(1.0, p[2]) * ph)
                               for p in res[(lname, algo, comp)])
                s.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>' % (
                    pts, color, ' stroke-dasharray="6,4"' if ls == "--" else ""))
    ly = H - 18
    for k, ((algo, comp), (color, ls)) in enumerate(STYLES.items()):
        x = ml + k * 200
        s.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>' % (
            x, ly, x + 30, ly, color, ' stroke-dasharray="6,4"' if ls == "--" else ""))
        s.append('<text x="%d" y="%d">%s%s</text>' % (x + 36, ly + 4, "hierarchical" if algo == "hier" else "flat ring",
                                                      " + fp16" if comp == "fp16" else ""))
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")
    return path


def cmd_compact(a):
    for path in a.traces:
        out = path.replace(".tl.json.gz", ".tlc.json.gz").replace(".tl.json", ".tlc.json.gz")
        if out == path:
            print("compact: %s is not a .tl.json[.gz] file" % path)
            return 1
        d = compact_timeline(load_json(path))
        with gzip.open(out, "wt", compresslevel=9) as f:
            json.dump(d, f, separators=(",", ":"))
    return 0


# ----------------------------------------------------------------------------- main


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Inputs (--data, default bench/model_data/, written by bench/model_data/measure.sh): "
               "machine.json (its cores), p2p_local.jsonl (p2p_bench, two ranks on one host), "
               "ar_1x2.jsonl / ar_1x4.jsonl (allreduce_bench on one host: the shared-memory fits), "
               "train_1x1_r<k>.json (one rank: the CNN's op order for the projection), "
               "compress_{none,fp16}_1x2_r<k>.json (two ranks on one host: fp16's cost), and per link "
               "rate a folder (1gbit/, 10gbit/) with p2p.jsonl (a local and a remote peer), "
               "ar_2x1/2x2/3x1.jsonl (allreduce_bench across hosts: <nodes>x<ranks per node>) and "
               "train_<layout>_<config>_r<k>.json (ringflow train summaries: ring, fp16, hier, p2p "
               "(flat ring), nx (--no-gradient-exchange)). Each train_*.json has its --timeline beside "
               "it as .tl.json[.gz] or compacted (`compact`) as .tlc.json.gz. "
               "Reproduce: python3 bench/model.py fit | validate | project --plot docs/scaling_projection.png")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", default=os.path.join(here, "model_data"),
                        help="measurement folder (default: %(default)s)")
    common.add_argument("--model", default="cnn", choices=sorted(MODELS), help="model whose Variables fill the buckets")
    common.add_argument("--bucket-mb", type=float, default=25.0, help="bucket cap after the 1 MiB first bucket (25)")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", parents=[common], help="alpha/beta per link class, with residuals")
    f.add_argument("--residuals", action="store_true", help="print every row's residual")
    v = sub.add_parser("validate", parents=[common], help="measured vs predicted step times of the multi-host runs")
    v.add_argument("--links", choices=("allreduce", "p2p", "training"), default="training",
                   help="inter-node link: the allreduce_bench fit, the ping-pong fit, or (default) calibrated on the"
                        " 2x1 training runs' own allreduce (alpha from the allreduce fit; its extra time per byte"
                        " over that fit grows with the ranks per core)")
    v.add_argument("--calibration", help="take the links, the fp16 cost and the calibration from this folder's"
                                         " measurements instead of --data's (a held-out check)")
    v.add_argument("--stat", choices=("median", "mean"), default="median",
                   help="a run's step time: the median of rank 0's step spans (default) or train_seconds/steps")
    v.add_argument("--ranks", choices=("step-max", "slowest", "all"), default="step-max",
                   help="compute A from the no-exchange runs: per step the rank that took longest (default), the"
                        " slowest rank's mean step, or every rank")
    v.add_argument("--json", action="store_true", help="one JSON line per configuration")
    pr = sub.add_parser("project", parents=[common], help="scaling efficiency from 8 to 512 GPUs")
    pr.add_argument("--plot", help="write the figure here (.png with matplotlib, else .svg)")
    c = sub.add_parser("compact", help="rewrite --timeline traces (.tl.json[.gz]) as compact .tlc.json.gz files")
    c.add_argument("traces", nargs="+", help="trace files; each X.tl.json[.gz] becomes X.tlc.json.gz (the original is kept)")
    a = p.parse_args(argv)
    return {"fit": cmd_fit, "validate": cmd_validate, "project": cmd_project, "compact": cmd_compact}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
