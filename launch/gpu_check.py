"""The GPU check's plan: runs every check with the bundle's binaries and writes one JSON report.
Started by launch/gpu-check.sh (which sets the library path from the bundle and the target's torch);
standard library only, so any Python 3.8+ with torch runs it. docs/gpu.md describes each check.

usage: gpu_check.py --bundle DIR --out REPORT.json [--dry-run] [--proof PROOF.json] [--budget-s S]
  --dry-run  no GPU: every check runs with the device swapped to the CPU (NCCL to the host data plane)
             and very few steps; the report says so. What it proves: the plan runs end to end and the
             report has every check; not that anything works on a GPU."""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--bundle", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--dry-run", action="store_true")
ap.add_argument("--proof", help="JSON of the dry run's bundle proof, copied into the report")
ap.add_argument("--budget-s", type=float, default=480.0)
opts = ap.parse_args()

B = os.path.abspath(opts.bundle)
DRY = opts.dry_run
WORK = os.path.join(os.path.dirname(os.path.abspath(opts.out)), "gpu-check-runs")
CORPUS = os.path.join(B, "data/test_corpus")
TINY = os.path.join(B, "recipes/pretrain/tiny.textproto")
DEVICE = "CPU" if DRY else "CUDA"
MPIRUN = [os.path.join(B, "openmpi/bin/mpirun"), "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
          "-x", "LD_LIBRARY_PATH", "-x", "OMP_NUM_THREADS"]
START = time.time()

# The tiny recipe on the small test corpus (vocabulary 512), no checkpoints, evaluation at the end only.
DATA = [f"data.train_prefix={CORPUS}/train", f"data.valid_prefix={CORPUS}/valid",
        f"data.tokenizer={CORPUS}/tokenizer.model", "model.vocab_size=512",
        "checkpoint.interval=0", "checkpoint.save_final=false", "train.eval_interval=0", "train.eval_sequences=8",
        "logging.log_interval=5"]
# The parity layouts' smaller model (tests/e2e/parallel_parity.py), so the 2-rank runs stay quick.
SMALL = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
         "train.micro_batch_size=4", "data.seq_len=32", "schedule.warmup_steps=3"]


def steps(n):
    """Steps for a check: n on the GPU, 3 in the dry run."""
    return 3 if DRY else n


# The bundle's programs run with the bundle's library path; Python (mixtral_bench.py) with the system's.
BUNDLE_LD = os.environ.get("MOETRAIN_BUNDLE_LD_LIBRARY_PATH", os.environ.get("LD_LIBRARY_PATH", ""))
HOST_LD = os.environ.get("MOETRAIN_HOST_LD_LIBRARY_PATH", "")
LOGS = os.path.join(WORK, "logs")
CHECK_DEADLINE = [float("inf")]  # the running check's cap (time.time() value); run() never goes past it
RUNS = [0]


class CheckTimedOut(Exception):
    pass


def run(cmd, env=None, timeout=300):
    """Runs cmd in its own process group with its output in a log file under WORK/logs (kept whatever
    happens: a crash or a hang keeps what it printed). Past the check's cap or the budget the whole group
    is killed and CheckTimedOut raised (the check is then reported "timed out" with what it measured)."""
    t0 = time.time()
    ld = HOST_LD if cmd[0] == sys.executable else BUNDLE_LD
    cap = min(CHECK_DEADLINE[0], START + opts.budget_s) - t0
    timeout = max(1.0, min(timeout, cap))
    RUNS[0] += 1
    log = os.path.join(LOGS, "%03d-%s.log" % (RUNS[0], re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(cmd[0]))))
    with open(log + ".out", "w") as fo, open(log + ".err", "w") as fe:
        try:
            p = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, start_new_session=True,
                                 env={**os.environ, "LD_LIBRARY_PATH": ld, **(env or {})})
        except OSError as e:  # a program that is not there (nvidia-smi on a machine without the driver's tools)
            return {"cmd": " ".join(cmd), "rc": 127, "seconds": 0.0, "stdout": "", "stderr": str(e), "log": log}
        timed_out = False
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # a hang (an NCCL call waiting forever) costs this check only
            timed_out = True
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            rc = p.wait()
    out, err = (open(log + x, errors="replace").read() for x in (".out", ".err"))
    r = {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.time() - t0, 2), "stdout": out, "stderr": err,
         "log": log}
    if timed_out:
        raise CheckTimedOut(f"{os.path.basename(cmd[0])} timed out after {timeout:.0f} s (output: {log}.out/.err; "
                            f"last output: {tail(err or out, 300)!r})")
    return r


def tail(text, n=1500):
    return text[-n:] if text else ""


class CheckFailed(Exception):
    pass


def train(name, overrides, ranks=0, env=None, fresh=True):
    """moe-train on the tiny recipe; ranks > 0: under the bundle's mpirun; fresh=False continues the run
    directory's checkpoint. Returns (metrics rows, run)."""
    run_dir = os.path.join(WORK, name)
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [os.path.join(B, "bin/moe-train"), "--recipe", TINY, "--run-dir", run_dir]
    # The dry run trains the small parity model everywhere: it exercises the plan, not the numbers.
    for o in DATA + (SMALL if DRY else []) + overrides:
        cmd += ["--set", o]
    if ranks:
        cmd = MPIRUN + ["-np", str(ranks)] + cmd
    r = run(cmd, env=env, timeout=300)
    if r["rc"] != 0:
        raise CheckFailed(f"{name}: moe-train exited {r['rc']} after {r['seconds']} s: {tail(r['stderr'] or r['stdout'])}"
                          f" (log {r['log']}.err)")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    r["run_dir"] = run_dir
    return rows, r


def worst_rel(a, b, key="loss"):
    if len(a) != len(b):
        raise CheckFailed(f"{len(a)} steps against {len(b)}")
    worst, at = 0.0, None
    for x, y in zip(a, b):
        if key in x and key in y:
            rel = abs(x[key] - y[key]) / max(abs(y[key]), 1e-12)
            if rel > worst:
                worst, at = rel, x.get("step")
    return worst, at


def expert_loads(run_dir):
    """Per step: the expert load vectors of expert_load.jsonl ({} when the run wrote none)."""
    path = os.path.join(run_dir, "expert_load.jsonl")
    loads = {}
    if os.path.exists(path):
        for line in open(path):
            row = json.loads(line)
            loads[row.get("step")] = {k: v for k, v in row.items() if k != "step"}
    return loads


def first_routing_difference(a_rows, b_rows, a_dir, b_dir):
    """The first step whose routing differs between two runs: a max_vio (per layer) or an expert load
    that is not equal. None when routing is the same at every step."""
    la, lb = expert_loads(a_dir), expert_loads(b_dir)
    for x, y in zip(a_rows, b_rows):
        step = x.get("step")
        vio = sorted(k for k in x if k.startswith("max_vio") and k in y and x[k] != y[k])
        if vio or la.get(step) != lb.get(step):
            return {"step": step, "max_vio_differs": vio, "expert_load_differs": la.get(step) != lb.get(step)}
    return None


def device(dev="CUDA"):
    return [f"train.device={'CPU' if DRY else dev}"]


def parse_gtest(text):
    """Cases of a gtest run from its output, when no JSON came (a crash): name -> passed/failed/skipped,
    and the case that was running when it stopped ("crashed")."""
    cases, running = {}, None
    for line in text.splitlines():
        m = re.match(r"\[ +(RUN|OK|FAILED|SKIPPED) +\] (\S+)", line)
        if not m:
            continue
        kind, name = m.groups()
        if kind == "RUN":
            running = name
            continue
        if name.endswith(","):
            name = name[:-1]
        if "." in name and kind != "RUN":
            cases[name] = {"OK": "passed", "FAILED": "failed", "SKIPPED": "skipped"}[kind]
            running = None if name == running else running
    if running:
        cases[running] = "crashed"
    return cases


# ---- the checks: each fills `res` as it goes (a later failure or timeout keeps the figures) and sets
# res["pass"]; sub-checks that stand alone go in res["sub"][name] with their own "status" ----

def sub(res, name, fn):
    """Runs one sub-check: its figures and status go to res["sub"][name] whatever the others do."""
    d = res.setdefault("sub", {}).setdefault(name, {})
    t0 = time.time()
    try:
        fn(d)
        d["status"] = "pass" if d.get("pass", True) else "fail"
    except CheckTimedOut as e:
        d["status"], d["error"] = "timed out", str(e)
    except CheckFailed as e:
        d["status"], d["error"] = "fail", str(e)
    except Exception as e:  # a bug in the plan loses this sub-check only
        d["status"], d["error"] = "error", f"{type(e).__name__}: {e}"
    d["seconds"] = round(time.time() - t0, 1)
    d["pass"] = d["status"] == "pass"
    return d


def check_unit_tests(res):
    # A fresh location every run (WORK is emptied first, and the name is this run's): a stale JSON of an
    # earlier run can never be read; a crash (no JSON) keeps its output and the cases it got through.
    out_json = os.path.join(WORK, "unit", f"gpu_test.{os.getpid()}.json")
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    if os.path.exists(out_json):
        os.remove(out_json)
    r = run([os.path.join(B, "tests/gpu_test"), f"--gtest_output=json:{out_json}", "--gtest_color=no"],
            env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}, timeout=300)
    res.update({"rc": r["rc"], "log": r["log"], "json": out_json})
    cases = {}
    if os.path.exists(out_json):
        with open(out_json) as f:
            report = json.load(f)
        for suite in report.get("testsuites", []):
            for t in suite.get("testsuite", []):
                status = "failed" if t.get("failures") else ("skipped" if t.get("result") == "SKIPPED" else "passed")
                cases[f"{suite['name']}.{t['name']}"] = status
    else:
        cases = parse_gtest(r["stdout"])
        res["crashed"] = True  # no JSON: gpu_test died (rc < 0: by a signal)
    counts = {s: sum(1 for v in cases.values() if v == s) for s in ("passed", "failed", "skipped", "crashed")}
    # On a GPU nothing may skip; in the dry run the CUDA cases skip and the rest pass.
    ok = r["rc"] == 0 and not res.get("crashed") and counts["failed"] == 0 and (DRY or counts["skipped"] == 0)
    res.update({"pass": ok, "cases": cases, **counts})
    if not ok:
        res["error"] = tail(r["stdout"] + "\n" + r["stderr"])


FP32_TIGHT_STEPS, FP32_TIGHT, FP32_WIDE = 5, 1e-4, 1e-2


def check_fp32_gpu_vs_cpu(res):
    """Deterministic fp32 on the GPU against the CPU. The first steps must agree tightly; later ones drift
    (reduction orders differ, and a routing decision that flips moves the loss), so they get a wider bound;
    the first step whose routing differs (max_vio or an expert load) is reported."""
    n = steps(20)
    common = ["train.steps=%d" % n, "train.deterministic=true", "train.precision=FP32"]
    gpu, rg = train("fp32_gpu", common + device())
    res.update({"steps": len(gpu), "gpu_seconds": rg["seconds"]})
    cpu, rc = train("fp32_cpu", common + ["train.device=CPU"])
    res["cpu_seconds"] = rc["seconds"]
    k = min(FP32_TIGHT_STEPS, len(gpu))
    first, first_at = worst_rel(gpu[:k], cpu[:k])
    later, later_at = worst_rel(gpu[k:], cpu[k:]) if len(gpu) > k else (0.0, None)
    routing = first_routing_difference(gpu, cpu, rg["run_dir"], rc["run_dir"])
    res.update({"pass": len(gpu) == n and first <= FP32_TIGHT and later <= FP32_WIDE,
                "tolerance_rel_first_steps": FP32_TIGHT, "first_steps": k, "worst_rel_first_steps": first,
                "worst_first_at_step": first_at, "tolerance_rel_later_steps": FP32_WIDE,
                "worst_rel_later_steps": later, "worst_later_at_step": later_at,
                "first_routing_difference": routing,
                "final_loss": {"gpu": gpu[-1]["loss"], "cpu": cpu[-1]["loss"]}})


def check_bf16_gpu(res):
    n = steps(60)
    common = ["train.steps=%d" % n]
    bf, rb = train("bf16_gpu", common + device() + ["train.precision=BF16"])
    res.update({"steps": n, "bf16_seconds": rb["seconds"], "bf16_tokens_per_s": bf[-1].get("tokens_per_s")})
    fp, rf = train("bf16_ref_fp32_gpu", common + device() + ["train.precision=FP32"])
    worst, at = worst_rel(bf, fp)
    # Tracks, as the CPU test (tests/e2e/bf16_tracks_fp32.py, margins in tests/e2e/empirical.py) checks it:
    # each of the first 10 steps within 0.5% of fp32 (CPU worst 6.6e-4), then the mean of the last 10
    # within 3% (CPU worst 1.7%). Later single steps are not compared: any rounding difference moves their
    # loss by a few percent of step noise (16.9% at one step of one CPU run).
    head, last = min(10, len(bf)), min(10, len(bf))
    first_worst, first_at = worst_rel(bf[:head], fp[:head])
    tail_bf, tail_fp = sum(r["loss"] for r in bf[-last:]) / last, sum(r["loss"] for r in fp[-last:]) / last
    tail_rel = abs(tail_bf - tail_fp) / abs(tail_fp)
    k = min(5, len(bf))
    first, final = sum(r["loss"] for r in bf[:k]) / k, sum(r["loss"] for r in bf[-k:]) / k
    falls = final < 0.9 * first
    res.update({"pass": len(bf) == n and first_worst <= 0.005 and tail_rel <= 0.03 and (falls or DRY),
                "tolerance_rel_first10_per_step": 0.005, "worst_rel_first10": first_worst,
                "worst_first10_at_step": first_at, "tolerance_rel_last10_mean": 0.03, "rel_last10_mean": tail_rel,
                "worst_rel_loss_vs_fp32_any_step": worst, "worst_at_step": at, "mean_loss_first5": first,
                "mean_loss_last5": final, "loss_falls": falls, "fp32_seconds": rf["seconds"],
                "fp32_tokens_per_s": fp[-1].get("tokens_per_s")})


def check_two_ranks_share_the_gpu(res):
    """EP 2, TP 2 and expert TP 2 (each expert's hidden dimension split over the two ranks), two ranks on one GPU
    (host data plane: NCCL refuses two ranks on one GPU), against one GPU process with the same global batch
    (EP 2 and expert TP 2 are data-parallel 2: one process accumulates 2 micro-batches).
    With several GPUs the ranks are kept on the first (CUDA_VISIBLE_DEVICES)."""
    n = steps(10)
    base = SMALL + ["train.steps=%d" % n, "train.deterministic=true", "train.threads=1"] + device()
    one_gpu = {} if DRY else {"CUDA_VISIBLE_DEVICES": GPUS[0]["uuid"] if GPUS else "0"}
    res.update({"steps": n, "tolerance": 1e-4})

    def layout(name, over, accum):
        def go(d):
            single, _ = train(f"{name}_single", base + [f"train.grad_accum_steps={accum}"], env=one_gpu)
            two, r = train(f"{name}_2ranks", base + over + ["parallel.data_plane=HOST"], ranks=2,
                           env={"OMP_NUM_THREADS": "1", **one_gpu})
            worst = max(worst_rel(two, single, k)[0] for k in ("loss", "grad_norm"))
            d.update({"worst_rel_loss_or_grad_norm": worst, "seconds": r["seconds"], "steps": len(two),
                      "pass": len(two) == n and worst <= 1e-4})
        return go

    for name, over, accum in (("ep2", ["parallel.expert=2"], 2), ("tp2", ["parallel.tensor=2"], 1),
                              ("etp2", ["parallel.expert_tensor=2"], 2)):
        sub(res, name, layout(name, over, accum))


def check_memory_features(res):
    """Recomputation and the distributed optimizer on the GPU (bf16, deterministic): every recomputation
    setting gives bitwise the losses and gradient norms of none, FULL lowers the CUDA caching allocator's
    peak (mem_peak_mib, util::memory_stats on CUDA); the distributed optimizer over two ranks sharing the
    GPU (host data plane) gives the replicated optimizer's losses within 1e-6."""
    n = steps(4)
    base = SMALL + ["train.steps=%d" % n, "train.deterministic=true", "train.precision=BF16",
                    "train.threads=1", "train.grad_accum_steps=2"] + device()
    one_gpu = {} if DRY else {"CUDA_VISIBLE_DEVICES": GPUS[0]["uuid"] if GPUS else "0"}

    def recompute(d):
        runs = {}
        for name, over in (("none", []), ("full", ["train.recompute=FULL"]),
                           ("selective", ["train.recompute=SELECTIVE",
                                          'train.recompute_modules=["core_attn", "moe_act", "layernorm", "mlp", "moe"]'])):
            runs[name], _ = train(f"recompute_{name}", base + over, env=one_gpu)
        same = all([(r["loss"], r["grad_norm"]) for r in runs[k] if "grad_norm" in r] ==
                   [(r["loss"], r["grad_norm"]) for r in runs["none"] if "grad_norm" in r] for k in runs)
        peak = {k: max(r.get("mem_peak_mib", -1) for r in v) for k, v in runs.items()}
        d.update({"bitwise_equal": same, "peak_mib": peak,
                  "pass": same and 0 < peak["full"] < peak["none"]})

    def distributed(d):
        rows = {}
        for name, over in (("replicated", []), ("distributed", ["optimizer.distributed=true"])):
            rows[name], r = train(f"zero1_{name}", base + over + ["parallel.data_plane=HOST"], ranks=2,
                                  env={"OMP_NUM_THREADS": "1", **one_gpu})
        worst = worst_rel(rows["distributed"], rows["replicated"])[0]
        held = [max(r.get("mem_allocated_mib", -1) for r in rows[k]) for k in ("replicated", "distributed")]
        d.update({"worst_rel_loss": worst, "held_mib": held, "pass": worst <= 1e-6 and held[1] < held[0]})

    sub(res, "recompute", recompute)
    sub(res, "distributed_optimizer", distributed)


def check_nccl_one_rank(res):
    """One rank over NCCL (the data plane's collectives run, on a world of one) against the same rank on
    the host data plane: equal losses."""
    n = steps(10)
    base = SMALL + ["train.steps=%d" % n, "train.deterministic=true"] + device()
    nccl, rn = train("nccl_1rank", base + [f"parallel.data_plane={'HOST' if DRY else 'NCCL'}"], ranks=1)
    res.update({"steps": n, "nccl_seconds": rn["seconds"]})
    host, rh = train("host_1rank", base + ["parallel.data_plane=HOST"], ranks=1)
    worst, at = worst_rel(nccl, host)
    res.update({"pass": len(nccl) == n and worst == 0.0, "worst_rel_loss": worst, "worst_at_step": at,
                "host_seconds": rh["seconds"]})


def gtest_under_mpirun(d, ranks, flt, env=None):
    r = run(MPIRUN + ["-np", str(ranks), os.path.join(B, "tests/multirank_test"), f"--gtest_filter={flt}",
                      "--gtest_color=no"], env={"OMP_NUM_THREADS": "1", **(env or {})}, timeout=180)
    passed = len(re.findall(r"\[       OK \]", r["stdout"]))
    skipped = len(re.findall(r"\[  SKIPPED \]", r["stdout"]))
    failed = len(re.findall(r"\[  FAILED  \]", r["stdout"]))
    good = r["rc"] == 0 and failed == 0 and (DRY or skipped == 0) and passed + skipped > 0
    d.update({"filter": f"{flt}", "ranks": ranks, "passed": passed, "skipped": skipped, "failed": failed,
              "rc": r["rc"], "log": r["log"], "pass": good,
              **({} if good else {"output": tail(r["stdout"] + r["stderr"])})})


def check_nccl_communicator_tests(res):
    """tests/multirank/nccl_test.cpp: the NCCL collectives against MPI (one rank: NCCL refuses two ranks on one
    GPU) and MPI's host staging of CUDA tensors (two ranks sharing the GPU)."""
    one_gpu = {} if DRY else {"CUDA_VISIBLE_DEVICES": GPUS[0]["uuid"] if GPUS else "0"}
    for ranks, flt in ((1, "NcclCommunicator.*:MpiStaging.*"), (2, "MpiStaging.*")):
        sub(res, f"np{ranks}", lambda d, ranks=ranks, flt=flt: gtest_under_mpirun(d, ranks, flt, one_gpu))


EP2_NCCL_TOLERANCE = 1e-5


def check_multi_gpu(res):
    """With two or more GPUs (in the dry run: on the CPU, NCCL swapped to HOST): NCCL across ranks. The
    NCCL communicator tests on 2 ranks (one GPU each), and EP 2 (one GPU per rank) with
    parallel.data_plane=NCCL against HOST: the same model, data and deterministic steps, so per-step losses
    agree within EP2_NCCL_TOLERANCE relative (the sums are the same; NCCL's reduction order may differ from
    the host's in the last bits). Then the EP 2 NCCL run's bf16 steady state under sync debug "error": the
    only host reads left are the counted ones (util::read_to_host), which lift the mode."""
    if not DRY and len(GPUS) < 2:
        res.update({"pass": True, "skipped": f"{len(GPUS)} GPU visible: NCCL across ranks needs two"})
        return
    res["gpus"] = len(GPUS)
    sub(res, "nccl_communicator_np2", lambda d: gtest_under_mpirun(d, 2, "NcclCommunicator.*"))
    n = steps(10)
    base = SMALL + ["train.steps=%d" % n, "train.deterministic=true", "parallel.expert=2"] + device()

    def parity(d):
        nccl, rn = train("ep2_nccl", base + [f"parallel.data_plane={'HOST' if DRY else 'NCCL'}"], ranks=2)
        d.update({"steps": len(nccl), "nccl_seconds": rn["seconds"],
                  "data_plane_announced": "data plane: nccl" in rn["stdout"] or DRY})
        host, rh = train("ep2_host", base + ["parallel.data_plane=HOST"], ranks=2)
        worst, at = worst_rel(nccl, host)
        # NCCL enqueues every collective on its own stream: no step may hold the host in one (the host plane
        # of the dry run counts 5·L·m + 5, tests/e2e/host_waits.py).
        waits = [r.get("comm_host_waits", 0) for r in nccl if "host_reads" in r]
        d.update({"pass": len(nccl) == n and worst <= EP2_NCCL_TOLERANCE and d["data_plane_announced"]
                  and (DRY or max(waits, default=0) == 0),
                  "tolerance_rel": EP2_NCCL_TOLERANCE, "worst_rel_loss": worst, "worst_at_step": at,
                  "host_seconds": rh["seconds"], "comm_host_waits_per_step": sorted(set(waits)),
                  "host_reads_per_step": sorted({r["host_reads"] for r in nccl if "host_reads" in r})})
    sub(res, "ep2_nccl_vs_host", parity)

    def sync_ep2(d):
        rows, r = train("sync_debug_ep2_bf16", SMALL + ["train.steps=%d" % steps(6), "parallel.expert=2",
                                                        "train.precision=BF16",
                                                        f"parallel.data_plane={'HOST' if DRY else 'NCCL'}"] + device(),
                        ranks=2, env={"MOETRAIN_CUDA_SYNC_DEBUG": "error", "MOETRAIN_CUDA_SYNC_DEBUG_AFTER": "2"})
        announced = "CUDA sync debug mode error from step" in r["stderr"] + r["stdout"]
        d.update({"steps": len(rows), "announced": announced, "pass": len(rows) == steps(6) and (announced or DRY)})
    sub(res, "sync_debug_ep2_bf16_error", sync_ep2)
    res["pass"] = all(v["pass"] for v in res["sub"].values())


# moe-layer in moe-bench, x needing its gradient: fp32's grouped-GEMM fallback syncs once per grouped GEMM,
# 3 forward + 6 backward (input and weight gradients of gate, up and down) per iteration.
FP32_SYNCS_PER_ITER = 9


def check_sync_debug(res):
    """Steady state under CUDA's sync debug mode. bf16 (the grouped GEMM's CUTLASS path) under "error": the
    MoE layer in moe-bench (its timed iterations) and moe-train from step 3 (MOETRAIN_CUDA_SYNC_DEBUG,
    csrc/util/cuda_sync_debug.h). fp32 under "warn" (torch's grouped-GEMM fallback copies the offsets to
    the host, docs/routing.md): moe-bench counts the syncs, FP32_SYNCS_PER_ITER per iteration."""
    iters = 3

    def layer(d, precision, mode):
        r = run([os.path.join(B, "bin/moe-bench"), "moe-layer", "--device", "cpu" if DRY else "cuda", "--precision",
                 precision, "--tokens", "512" if DRY else "4096", "--warmup", "1", "--iters", str(iters)],
                env={"MOETRAIN_CUDA_SYNC_DEBUG": mode}, timeout=120)
        line = json.loads(r["stdout"].strip().splitlines()[-1]) if r["rc"] == 0 and r["stdout"].strip() else {}
        d.update({"rc": r["rc"], "mode": mode, "sync_debug": line.get("sync_debug"),
                  "sync_warnings": line.get("sync_warnings"), "log": r["log"]})
        if r["rc"] != 0:
            d["error"] = tail(r["stderr"])
        want = 0 if precision == "bf16" or DRY else FP32_SYNCS_PER_ITER * iters
        d["expected_sync_warnings"] = want
        d["pass"] = r["rc"] == 0 and (DRY or line.get("sync_debug") == mode) and \
            (mode == "error" or line.get("sync_warnings") == want)

    sub(res, "moe_layer_bf16_error", lambda d: layer(d, "bf16", "error"))
    sub(res, "moe_layer_fp32_warn", lambda d: layer(d, "fp32", "warn"))

    def trainer(d):
        n = steps(8)
        rows, r = train("sync_debug_bf16", ["train.steps=%d" % n, "train.precision=BF16"] + device(),
                        env={"MOETRAIN_CUDA_SYNC_DEBUG": "error", "MOETRAIN_CUDA_SYNC_DEBUG_AFTER": "2"})
        announced = "CUDA sync debug mode error from step" in r["stderr"] + r["stdout"]
        d.update({"steps": len(rows), "announced": announced, "pass": len(rows) == n and (announced or DRY)})
        if not (announced or DRY):
            d["error"] = "moe-train did not turn the mode on (the trainer sets it only when the model is on a GPU)"
    sub(res, "moe_train_bf16_error", trainer)
    res["pass"] = all(v["pass"] for v in res["sub"].values())


def bench(d, args):
    r = run([os.path.join(B, "bin/moe-bench")] + args, timeout=180)
    d["log"] = r["log"]
    if r["rc"] != 0:
        raise CheckFailed(f"moe-bench {' '.join(args)}: exit {r['rc']}: {tail(r['stderr'])}")
    d.update(json.loads(r["stdout"].strip().splitlines()[-1]))


BENCH_SIZE = (["--tokens", "256", "--d-model", "64", "--experts", "8", "--top-k", "2", "--hidden", "128",
               "--warmup", "1", "--iters", "2"] if DRY else
              ["--tokens", "16384", "--d-model", "2048", "--experts", "8", "--top-k", "2", "--hidden", "4096",
               "--warmup", "3", "--iters", "20"])
BENCH_DEV = ["--device", "cpu" if DRY else "cuda"]


def check_bench_bf16(res):
    """moe-bench on the GPU, first in the plan: the bf16 MoE layer forward + backward against one dense bf16
    GEMM of the same FLOPs (target >= 0.7x) and the dense SwiGLU; then transformers' MixtralSparseMoeBlock
    at the same sizes (target: ours >= 3x its tokens/s). Each is a sub-check: one that fails or hangs keeps
    the others' figures."""
    for name, kind in (("moe_layer_bf16", "moe-layer"), ("gemm_bf16", "gemm"), ("dense_swiglu_bf16", "dense-swiglu")):
        sub(res, name, lambda d, kind=kind: bench(d, [kind] + BENCH_SIZE + BENCH_DEV + ["--precision", "bf16"]))
    vals = dict(zip(BENCH_SIZE[0::2], BENCH_SIZE[1::2]))

    def mixtral(d):
        r = run([sys.executable, os.path.join(B, "launch/mixtral_bench.py"), "--device", "cpu" if DRY else "cuda",
                 "--tokens", vals["--tokens"], "--d-model", vals["--d-model"], "--experts", vals["--experts"],
                 "--top-k", vals["--top-k"], "--hidden", vals["--hidden"], "--warmup", vals["--warmup"],
                 "--iters", vals["--iters"]], timeout=240)
        lines = [json.loads(x) for x in r["stdout"].splitlines() if x.startswith("{")]
        # The target is judged against the block's eager experts (its reference code path, the same whether
        # transformers is installed or the copy runs); grouped_mm, when it runs, is reported beside it.
        eager = [x for x in lines if "eager" in x.get("implementation", "") and "tokens_per_s" in x]
        grouped = [x for x in lines if "grouped_mm" in x.get("implementation", "") and "tokens_per_s" in x]
        d.update({"runs": lines, "log": r["log"], "pass": bool(eager)})
        if eager:
            d["eager_tokens_per_s"] = eager[0]["tokens_per_s"]
        if grouped:
            d["grouped_mm_tokens_per_s"] = grouped[0]["tokens_per_s"]
        if not eager:
            d["error"] = tail(r["stderr"] or r["stdout"]) or "no eager run"
        if DRY:  # the copy used where transformers is missing equals the installed transformers' block
            v = run([sys.executable, os.path.join(B, "launch/mixtral_bench.py"), "--verify-copy", "--d-model", "32",
                     "--hidden", "64"], timeout=120)
            d["copy_equals_installed_transformers"] = v["rc"] == 0
            if v["rc"] != 0:
                d["pass"] = False
                d["error"] = "the copied Mixtral block differs from the installed transformers: " + \
                    tail(v["stdout"] + v["stderr"])
    sub(res, "mixtral_block", mixtral)
    s = res["sub"]
    moe = s["moe_layer_bf16"]
    targets = {}
    if "matmul_gflop_per_s" in moe and "matmul_gflop_per_s" in s["gemm_bf16"]:
        ratio = moe["matmul_gflop_per_s"] / s["gemm_bf16"]["matmul_gflop_per_s"]
        targets["moe_vs_gemm_tflops"] = {"ratio": ratio, "target": 0.7, "met": ratio >= 0.7}
    if "tokens_per_s" in moe and "eager_tokens_per_s" in s["mixtral_block"]:
        ratio = moe["tokens_per_s"] / s["mixtral_block"]["eager_tokens_per_s"]
        targets["moe_vs_mixtral_tokens_per_s"] = {"ratio": ratio, "target": 3.0, "met": ratio >= 3.0}
        if "grouped_mm_tokens_per_s" in s["mixtral_block"]:
            targets["moe_vs_mixtral_grouped_mm_tokens_per_s"] = {
                "ratio": moe["tokens_per_s"] / s["mixtral_block"]["grouped_mm_tokens_per_s"]}
    res["targets"] = targets  # reported, not gating: the check is that the benchmarks run
    res["pass"] = all(v["pass"] for v in s.values())


def check_bench_fp32(res):
    """The fp32 MoE layer at the benchmark's sizes (torch's grouped-GEMM fallback on the GPU): last, as the
    slowest and least important figure."""
    sub(res, "moe_layer_fp32", lambda d: bench(d, ["moe-layer"] + BENCH_SIZE + BENCH_DEV + ["--precision", "fp32"]))
    res["pass"] = res["sub"]["moe_layer_fp32"]["pass"]


def check_checkpoints_cross_devices(res):
    """A run saved on the GPU resumes on the CPU, and one saved on the CPU resumes on the GPU: both match an
    uninterrupted GPU run (deterministic, fp32) after the resume, within the fp32 GPU-vs-CPU tolerance."""
    n = steps(6)
    half = max(1, n // 2)
    base = SMALL + ["train.steps=%d" % n, "train.deterministic=true", f"checkpoint.interval={half}"]
    whole, _ = train("ckpt_whole_gpu", base + device())
    res.update({"steps": n, "resumed_at": half, "tolerance": 1e-4})

    def resume(name, first, second):
        def go(d):
            train(f"ckpt_{name}", base + first + [f"train.exit_interval={half}"])
            resumed, r = train(f"ckpt_{name}", base + second, fresh=False)
            worst, at = worst_rel(resumed, whole)
            d.update({"worst_rel_loss": worst, "worst_at_step": at, "resumed": "resumed from" in r["stdout"],
                      "pass": len(resumed) == n and worst <= 1e-4 and "resumed from" in r["stdout"]})
        return go
    sub(res, "gpu_to_cpu", resume("gpu_to_cpu", device(), ["train.device=CPU"]))
    sub(res, "cpu_to_gpu", resume("cpu_to_gpu", ["train.device=CPU"], device()))
    res["pass"] = all(v["pass"] for v in res["sub"].values())


def check_plan_self_test(res):
    """Dry run only: the plan's own machinery, which a GPU run relies on and the CPU can prove. A command
    past its check's cap is killed with its process group and reported "timed out", and the plan goes on;
    a gtest that crashes keeps its output and the cases it passed; the stale results planted before the
    run (gpu-check.sh --dry-run) were removed, not read."""
    def timeout(d):
        saved = CHECK_DEADLINE[0]
        CHECK_DEADLINE[0] = time.time() + 2
        t0 = time.time()
        try:
            run(["bash", "-c", "sleep 30 & sleep 30; echo never"])
            d["error"] = "not killed"
        except CheckTimedOut as e:
            d["timed_out_after_s"] = round(time.time() - t0, 1)
            d["message"] = str(e)[:200]
        finally:
            CHECK_DEADLINE[0] = saved
        d["pass"] = "timed_out_after_s" in d and d["timed_out_after_s"] < 10
    sub(res, "per_check_timeout", timeout)

    def crash(d):
        r = run(["bash", "-c", "echo '[ RUN      ] Fake.Passes'; echo '[       OK ] Fake.Passes (0 ms)'; "
                               "echo '[ RUN      ] Fake.Crashes'; kill -SEGV $$"])
        cases = parse_gtest(r["stdout"])
        d.update({"rc": r["rc"], "cases": cases, "output_kept": os.path.getsize(r["log"] + ".out") > 0,
                  "pass": r["rc"] != 0 and cases == {"Fake.Passes": "passed", "Fake.Crashes": "crashed"}})
    sub(res, "crashed_gtest_keeps_output", crash)

    def stale(d):
        planted = os.environ.get("MOETRAIN_GPU_CHECK_STALE", "")
        d["planted"] = [p for p in planted.split(":") if p]
        # The report is written anew after every check: that the planted one was removed first shows in
        # stale_results_removed; the planted files under WORK must be gone, and no stale case read.
        d["left"] = [p for p in d["planted"] if p != opts.out and os.path.exists(p)]
        d["stale_report_removed"] = opts.out in REPORT.get("stale_results_removed", [])
        unit = REPORT["checks"].get("cuda_unit_tests", {}).get("cases", {})
        d["stale_case_read"] = "Stale.FromAnEarlierRun" in unit
        d["pass"] = bool(d["planted"]) and not d["left"] and not d["stale_case_read"] and \
            (d["stale_report_removed"] or opts.out not in d["planted"])
    sub(res, "stale_results_removed", stale)
    res["pass"] = all(v["pass"] for v in res["sub"].values())


# Each check with its cap in seconds (on the GPU; the dry run's are the same). bf16 benchmarks first: a hang
# further on cannot cost their figures. A check past its cap is killed and reported "timed out".
CHECKS = [("moe_bench_bf16", check_bench_bf16, 75),
          ("cuda_unit_tests", check_unit_tests, 90),
          ("sync_debug_steady_state", check_sync_debug, 60),
          ("fp32_gpu_vs_cpu", check_fp32_gpu_vs_cpu, 60),
          ("bf16_gpu_tracks_fp32", check_bf16_gpu, 60),
          ("checkpoints_cross_devices", check_checkpoints_cross_devices, 45),
          ("ep2_tp2_two_ranks_share_gpu", check_two_ranks_share_the_gpu, 80),
          ("recompute_and_distributed_optimizer", check_memory_features, 60),
          ("nccl_one_rank_equals_host", check_nccl_one_rank, 30),
          ("nccl_communicator_tests", check_nccl_communicator_tests, 40),
          ("multi_gpu_nccl", check_multi_gpu, 90),
          ("moe_bench_fp32", check_bench_fp32, 30)]
if DRY:
    CHECKS.append(("plan_self_test", check_plan_self_test, 30))
GPUS = []
REPORT = {}


def gpu_info():
    """The visible GPUs, each by UUID (nvidia-smi), and torch's device count."""
    if DRY:
        return []
    r = run(["nvidia-smi", "--query-gpu=index,uuid,name,pci.bus_id,driver_version,memory.total",
             "--format=csv,noheader"], timeout=30)
    gpus = []
    if r["rc"] == 0:
        for line in r["stdout"].strip().splitlines():
            f = [x.strip() for x in line.split(",")]
            if len(f) >= 6:
                gpus.append(dict(zip(("index", "uuid", "name", "pci_bus_id", "driver", "memory"), f)))
    if not gpus:  # no nvidia-smi: torch's view (the UUID from the device properties)
        code = ("import json, torch; print(json.dumps([{'index': str(i), 'uuid': 'GPU-' + str(torch.cuda"
                ".get_device_properties(i).uuid), 'name': torch.cuda.get_device_name(i)} for i in range(torch.cuda"
                ".device_count())]))")
        r = run([sys.executable, "-c", code], timeout=60)
        if r["rc"] == 0 and r["stdout"].strip():
            gpus = json.loads(r["stdout"].strip().splitlines()[-1])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # nvidia-smi lists every GPU; keep those CUDA_VISIBLE_DEVICES shows
        keep = [v.strip() for v in visible.split(",") if v.strip()]
        gpus = [g for g in gpus if g["index"] in keep or g["uuid"] in keep or
                any(k.startswith("GPU-") and g["uuid"].startswith(k) for k in keep)]
    return gpus


def summary_line(name, c):
    figures = {k: v for k, v in c.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k not in ("seconds", "seconds_total", "rc")}
    text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in list(figures.items())[:6])
    return f"{name}: {c['status']}" + (f" ({text})" if text else "")


def run_check(name, fn, cap):
    result = {}
    t0 = time.time()
    left = opts.budget_s - (t0 - START)
    if left <= 5:
        result.update({"pass": False, "status": "not run", "error": f"not run: the {opts.budget_s:.0f} s budget was spent"})
    else:
        CHECK_DEADLINE[0] = t0 + min(cap, left)
        result["cap_s"] = round(min(cap, left), 1)
        try:
            fn(result)
            if "sub" in result:  # a check of sub-checks passes when every one does
                result["pass"] = result.get("pass", True) and all(v["pass"] for v in result["sub"].values())
            result["status"] = "pass" if result.get("pass") else "fail"
        except CheckTimedOut as e:
            result.update({"pass": False, "status": "timed out", "error": str(e)})
        except CheckFailed as e:
            result.update({"pass": False, "status": "fail", "error": str(e)})
        except Exception as e:  # a bug in the plan must not lose the other checks' results
            result.update({"pass": False, "status": "error", "error": f"{type(e).__name__}: {e}"})
        finally:
            CHECK_DEADLINE[0] = float("inf")
        result["pass"] = result["status"] == "pass"
    result["seconds_total"] = round(time.time() - t0, 1)
    if DRY:
        result["dry_run"] = True
    return result


def write_report():
    tmp = opts.out + ".tmp"
    with open(tmp, "w") as f:  # written after every check: a killed run keeps what it did
        json.dump(REPORT, f, indent=1)
    os.replace(tmp, opts.out)


def main():
    # Fresh results every run: the work directory (run directories, gtest JSON, logs) and the report of an
    # earlier run are removed first, so nothing stale is ever read or left looking current.
    shutil.rmtree(WORK, ignore_errors=True)
    removed = []
    for stale in (opts.out, opts.out + ".tmp"):
        if os.path.exists(stale):
            os.remove(stale)
            removed.append(stale)
    os.makedirs(LOGS)
    GPUS.extend(gpu_info())
    manifest = json.load(open(os.path.join(B, "MANIFEST.json")))
    REPORT.update({"dry_run": DRY, "device": DEVICE, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "host": platform.node(), "gpus": GPUS, "gpu_count": len(GPUS), "python": sys.version.split()[0],
                   "bundle": {k: manifest.get(k) for k in ("commit", "tree_dirty", "torch", "glibc_needed", "bytes")},
                   "work": WORK, "stale_results_removed": removed, "checks": {}})
    if opts.proof:
        REPORT["bundle_proof"] = json.load(open(opts.proof))
    for g in GPUS:
        print(f"[gpu-check] GPU {g.get('index')}: {g.get('uuid')} {g.get('name', '')} {g.get('pci_bus_id', '')}", flush=True)
    for name, fn, cap in CHECKS:
        result = run_check(name, fn, cap)
        REPORT["checks"][name] = result
        print(f"[gpu-check] {name}: {result['status']} ({result['seconds_total']} s)"
              + ("" if result["pass"] else ": " + str(result.get("error") or "")[:400]), flush=True)
        write_report()
    REPORT["seconds"] = round(time.time() - START, 1)
    REPORT["pass"] = all(c["pass"] for c in REPORT["checks"].values()) and \
        REPORT.get("bundle_proof", {}).get("pass", True)
    # The summary: every check and sub-check with its status and its figures.
    lines = []
    for name, c in REPORT["checks"].items():
        lines.append(summary_line(name, c))
        for sname, s in c.get("sub", {}).items():
            lines.append("  " + summary_line(sname, s))
    REPORT["summary"] = lines
    write_report()
    print("[gpu-check] summary:\n" + "\n".join("[gpu-check]   " + x for x in lines))
    print(f"[gpu-check] {'PASS' if REPORT['pass'] else 'FAIL'}{' (dry run, CPU)' if DRY else ''}: "
          f"{sum(c['pass'] for c in REPORT['checks'].values())}/{len(CHECKS)} checks in {REPORT['seconds']} s; "
          f"report {opts.out}")
    return 0 if REPORT["pass"] else 1


sys.exit(main())
