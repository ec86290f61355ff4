"""The diff stage's analysis: per-step losses of the same training on the GPU and on the CPU.

The MLP (f32) and the CNN in f64 must agree within `tol` (relative) at every step. The CNN in f32
drifts chaotically once a last-bit difference flips a ReLU or max-pool decision, so it is held to
the first `strict` steps, the mean loss of the last 50 steps (`late_tol`), the final parameter
norm (1e-2), and a control: its median distance from the f64 run's curve must be at most twice
that of the CPU's own f32 run (plus tol).

Files per run, in the stage's work folder, for KEY = MODEL-DTYPE and SIDE = gpu|cpu:
diff-KEY-SIDE.jsonl (--metrics lines), .json (stdout: the JSON summary), .err, .rc ("... exit RC").
"""
import json
import math
import os

from gpu_check.procs import TIMED_OUT, last_exit, read_text

RUNS = (("mlp", "f32"), ("cnn", "f32"), ("cnn", "f64"))
PARAM_NORM_TOL = 1e-2
NAN = float("nan")


def whole_run_checked(model, dtype):
    """Whether a run is held to the tolerance at every step (all but the CNN in f32)."""
    return (model, dtype) != ("cnn", "f32")


def read_losses(path):
    """{step: loss} from a --metrics file (per-epoch lines, which carry test_loss, left out)."""
    out = {}
    for line in read_text(path).splitlines():
        if line.strip():
            j = json.loads(line)
            if "test_loss" not in j:
                out[j["step"]] = j["loss"]
    return out


def read_summary(path):
    """The last JSON object line of a run's stdout (ringflow's summary), or None."""
    s = None
    for line in read_text(path).splitlines():
        if line.strip().startswith("{"):
            try:
                s = json.loads(line)
            except ValueError:
                pass
    return s


def last_error_line(err_text):
    """The last line of a run's stderr that mentions an error (else its last line), 200 chars."""
    lines = [l.strip() for l in err_text.splitlines() if l.strip() and not l.startswith("+ ")]
    errs = [l for l in lines if "error" in l.lower()]
    return ((errs or lines or ["no output"])[-1])[:200]


def run_failure(work, key):
    """Why the pair of runs for key cannot be compared (None when both ran and exited 0)."""
    why = None
    for side in ("gpu", "cpu"):
        base = os.path.join(work, "diff-%s-%s" % (key, side))
        if not os.path.exists(base + ".rc"):
            why = why or "%s run skipped (the gpu run failed)" % side
            continue
        rc = last_exit(base + ".rc")
        if rc != 0:
            how = "timed out" if rc in TIMED_OUT else "failed (exit %s)" % rc
            err = last_error_line(read_text(base + ".err")) if os.path.exists(base + ".err") else "no output"
            return "%s run %s: %s" % (side, how, err)
    return why


def rel(x, y):
    return abs(x - y) / max(abs(y), 1e-12)


def _worse(d, worst):
    """Whether d replaces worst as the largest difference; a NaN is the worst and stays so."""
    return not math.isnan(worst) and not d <= worst


def compare(a, b, strict):
    """Differences between two loss curves ({step: loss}) over the steps both have: the largest
    relative one and its step, the same over steps 1..strict, and the relative difference of the
    mean loss over the last 50 steps."""
    common = sorted(set(a) & set(b))
    worst, at, worst_s, at_s = 0.0, None, 0.0, None
    for k in common:
        d = rel(a[k], b[k])
        if _worse(d, worst):
            worst, at = d, k
        if k <= strict and _worse(d, worst_s):
            worst_s, at_s = d, k
    tail = [k for k in common if k > len(common) - 50]
    late = rel(sum(a[k] for k in tail) / len(tail), sum(b[k] for k in tail) / len(tail)) if tail else NAN
    return {"common": common, "worst": worst, "at": at, "worst_strict": worst_s, "at_strict": at_s, "late": late}


def param_norm_diff(sa, sb):
    if sa and sb and sb.get("param_norm"):
        return rel(sa["param_norm"], sb["param_norm"])
    return NAN


def median_distance(x, ref, steps):
    """The median relative distance of curve x from curve ref over the given steps."""
    ds = sorted(rel(x[k], ref[k]) for k in steps if k in ref)
    return ds[len(ds) // 2] if ds else NAN


def f64_control(a, b, ref, steps):
    """How far the GPU's (a) and the CPU's (b) f32 curves are from the f64 reference curve."""
    c = {"gpu_f32_median_rel_to_f64": median_distance(a, ref, steps),
         "cpu_f32_median_rel_to_f64": median_distance(b, ref, steps)}
    c["ratio"] = c["gpu_f32_median_rel_to_f64"] / max(c["cpu_f32_median_rel_to_f64"], 1e-12)
    return c


def control_ok(ctrl, tol):
    return ctrl is not None and ctrl["gpu_f32_median_rel_to_f64"] <= 2 * ctrl["cpu_f32_median_rel_to_f64"] + tol


def _over(v, bar, text):
    return "" if v <= bar else text


def whole_run_verdict(key, st, steps, tol):
    """(ok, text) for a run held to tol at every step."""
    n = len(st["common"])
    ok = n == steps and st["worst"] <= tol
    txt = ("%s: max rel diff %.2e" % (key, st["worst"]) + _over(st["worst"], tol, " > %g" % tol) +
           (" at step %s" % st["at"] if st["at"] else "") + " over %d steps" % n)
    if n != steps:
        txt += " (expected %d)" % steps
    return ok, txt


def drifting_verdict(key, st, pn, ctrl, steps, strict, tol, late_tol):
    """(ok, text) for the CNN in f32: first steps, late mean loss, parameter norm, f64 control."""
    n = len(st["common"])
    c_ok = control_ok(ctrl, tol)
    ok = n == steps and st["worst_strict"] <= tol and st["late"] <= late_tol and pn <= PARAM_NORM_TOL and c_ok
    txt = ("%s: steps 1-%d max rel diff %.2e" % (key, strict, st["worst_strict"]) +
           _over(st["worst_strict"], tol, " > %g" % tol) +
           ", last-50 mean loss %.2e" % st["late"] + _over(st["late"], late_tol, " > %g" % late_tol) +
           ", param norm %.2e" % pn + _over(pn, PARAM_NORM_TOL, " > 0.01") +
           " (whole run %.2e" % st["worst"] + (" at step %s" % st["at"] if st["at"] else "") + ", %d steps)" % n)
    if ctrl:
        txt += "; median distance from the f64 run: gpu f32 %.2e, cpu f32 %.2e" % (
            ctrl["gpu_f32_median_rel_to_f64"], ctrl["cpu_f32_median_rel_to_f64"]) + ("" if c_ok else " (gpu > 2x cpu)")
    else:
        txt += "; no f64 reference run"
    if n != steps:
        txt += " (expected %d)" % steps
    return ok, txt


def run_record(dtype, whole, st, strict, a, b, sa, sb, pn):
    """What report.json keeps of one compared pair of runs."""
    def g(s, k):
        return s.get(k) if s else None
    return {"dtype": dtype, "whole_run_checked": whole, "steps_compared": len(st["common"]),
            "max_rel_diff": st["worst"], "at_step": st["at"], "max_rel_diff_first_steps": st["worst_strict"],
            "strict_steps": strict, "at_step_strict": st["at_strict"],
            "last50_mean_loss_rel_diff": st["late"], "param_norm_rel_diff": pn,
            "first_loss_gpu": a.get(1), "first_loss_cpu": b.get(1),
            "final_loss_gpu": g(sa, "final_loss"), "final_loss_cpu": g(sb, "final_loss"),
            "param_norm_gpu": g(sa, "param_norm"), "param_norm_cpu": g(sb, "param_norm"),
            "sps_gpu": g(sa, "samples_per_second"), "sps_cpu": g(sb, "samples_per_second")}


def f64_reference(work):
    """The CPU's f64 CNN curve (the control's reference), or None when that run did not succeed."""
    base = os.path.join(work, "diff-cnn-f64-cpu")
    if os.path.exists(base + ".jsonl") and os.path.exists(base + ".rc") and last_exit(base + ".rc") == 0:
        return read_losses(base + ".jsonl")
    return None


def label(dry, graphed, n_models):
    if dry:
        return "cpu(1 thread) vs cpu"
    return "gpu (CUDA graph) vs cpu" if graphed and len(graphed) == n_models else "gpu vs cpu"


def compare_run(work, model, dtype, steps, tol, strict, late_tol):
    """(ok, text, record, graphed) for one model and dtype."""
    key = "%s-%s" % (model, dtype)
    whole = whole_run_checked(model, dtype)
    why = run_failure(work, key)
    if why:
        return False, "%s: %s" % (key, why), {"dtype": dtype, "whole_run_checked": whole, "error": why}, False
    base = os.path.join(work, "diff-" + key)
    a, b = read_losses(base + "-gpu.jsonl"), read_losses(base + "-cpu.jsonl")
    sa, sb = read_summary(base + "-gpu.json"), read_summary(base + "-cpu.json")
    st = compare(a, b, strict)
    pn = param_norm_diff(sa, sb)
    rec = run_record(dtype, whole, st, strict, a, b, sa, sb, pn)
    graphed = bool(sa and sa.get("cuda_graph"))
    if whole:
        ok, txt = whole_run_verdict(key, st, steps, tol)
        return ok, txt, rec, graphed
    ref = f64_reference(work)
    ctrl = f64_control(a, b, ref, st["common"]) if ref is not None else None
    if ctrl is not None:
        rec["f64_control"] = ctrl
    ok, txt = drifting_verdict(key, st, pn, ctrl, steps, strict, tol, late_tol)
    return ok, txt, rec, graphed


def diff_result(work, steps, tol, dry, strict, late_tol):
    """The diff stage's result from the runs' files in work."""
    models, parts, ok, graphed = {}, [], True, []
    for model, dtype in RUNS:
        good, txt, rec, g = compare_run(work, model, dtype, steps, tol, strict, late_tol)
        key = "%s-%s" % (model, dtype)
        ok = ok and good
        parts.append(txt)
        models[key] = rec
        if g:
            graphed.append(key)
    return {"status": "PASS" if ok else "FAIL", "summary": label(dry, graphed, len(models)) + ": " + "; ".join(parts),
            "tol": tol, "late_tol": late_tol, "strict_steps": strict, "steps": steps, "models": models}
