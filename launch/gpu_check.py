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


def run(cmd, env=None, timeout=300):
    t0 = time.time()
    ld = HOST_LD if cmd[0] == sys.executable else BUNDLE_LD
    # Nothing runs past the budget: a hang (an NCCL call waiting forever) costs that check, not the report.
    timeout = max(10, min(timeout, opts.budget_s - (time.time() - START)))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "LD_LIBRARY_PATH": ld, **(env or {})})
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), \
            f"timed out after {timeout} s"
    except OSError as e:  # a program that is not there (nvidia-smi on a machine without the driver's tools)
        rc, out, err = 127, "", str(e)
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.time() - t0, 2), "stdout": out, "stderr": err}


def tail(text, n=1500):
    return text[-n:] if text else ""


class CheckFailed(Exception):
    pass


def train(name, overrides, ranks=0, env=None, fresh=True):
    """moe-train on the tiny recipe; ranks > 0: under the bundle's mpirun; fresh=False continues the run
    directory's checkpoint. Returns (metrics rows, run)."""
    run_dir = os.path.join(WORK, name)
    if fresh:
        subprocess.run(["rm", "-rf", run_dir], check=True)
    cmd = [os.path.join(B, "bin/moe-train"), "--recipe", TINY, "--run-dir", run_dir]
    # The dry run trains the small parity model everywhere: it exercises the plan, not the numbers.
    for o in DATA + (SMALL if DRY else []) + overrides:
        cmd += ["--set", o]
    if ranks:
        cmd = MPIRUN + ["-np", str(ranks)] + cmd
    r = run(cmd, env=env, timeout=300)
    if r["rc"] != 0:
        raise CheckFailed(f"{name}: moe-train exited {r['rc']} after {r['seconds']} s: {tail(r['stderr'] or r['stdout'])}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
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


def device(dev="CUDA"):
    return [f"train.device={'CPU' if DRY else dev}"]


# ---- the checks: each returns a dict of numbers and sets "pass" ----

def check_unit_tests():
    out_json = os.path.join(WORK, "gpu_test.json")
    r = run([os.path.join(B, "tests/gpu_test"), f"--gtest_output=json:{out_json}"],
            env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}, timeout=300)
    with open(out_json) as f:
        report = json.load(f)
    cases = {}
    for suite in report.get("testsuites", []):
        for t in suite.get("testsuite", []):
            status = "failed" if t.get("failures") else ("skipped" if t.get("result") == "SKIPPED" else "passed")
            cases[f"{suite['name']}.{t['name']}"] = status
    counts = {s: sum(1 for v in cases.values() if v == s) for s in ("passed", "failed", "skipped")}
    # On a GPU nothing may skip; in the dry run the CUDA cases skip and the rest pass.
    ok = r["rc"] == 0 and counts["failed"] == 0 and (DRY or counts["skipped"] == 0)
    return {"pass": ok, "cases": cases, **counts, "seconds": r["seconds"],
            **({} if ok else {"error": tail(r["stdout"])})}


def check_fp32_gpu_vs_cpu():
    n = steps(20)
    common = ["train.steps=%d" % n, "train.deterministic=true", "train.precision=FP32"]
    gpu, rg = train("fp32_gpu", common + device())
    cpu, rc = train("fp32_cpu", common + ["train.device=CPU"])
    worst, at = worst_rel(gpu, cpu)
    return {"pass": len(gpu) == n and worst <= 1e-4, "steps": len(gpu), "tolerance": 1e-4,
            "worst_rel_loss": worst, "worst_at_step": at, "gpu_seconds": rg["seconds"], "cpu_seconds": rc["seconds"],
            "final_loss": {"gpu": gpu[-1]["loss"], "cpu": cpu[-1]["loss"]}}


def check_bf16_gpu():
    n = steps(60)
    common = ["train.steps=%d" % n]
    bf, rb = train("bf16_gpu", common + device() + ["train.precision=BF16"])
    fp, rf = train("bf16_ref_fp32_gpu", common + device() + ["train.precision=FP32"])
    worst, at = worst_rel(bf, fp)
    # Tracks, as the CPU test (tests/e2e/bf16_tracks_fp32.py, margins in tests/e2e/empirical.py) checks it:
    # each of the first 10 steps within 0.5% of fp32 (CPU worst 6.6e-4), then the mean of the last 10
    # within 3% (CPU worst 1.7%). Later single steps are not compared: any rounding difference moves their
    # loss by a few percent of step noise (16.9% at one step of one CPU run).
    head, tail = min(10, len(bf)), min(10, len(bf))
    first_worst, first_at = worst_rel(bf[:head], fp[:head])
    tail_bf, tail_fp = sum(r["loss"] for r in bf[-tail:]) / tail, sum(r["loss"] for r in fp[-tail:]) / tail
    tail_rel = abs(tail_bf - tail_fp) / abs(tail_fp)
    k = min(5, len(bf))
    first, last = sum(r["loss"] for r in bf[:k]) / k, sum(r["loss"] for r in bf[-k:]) / k
    falls = last < 0.9 * first
    return {"pass": len(bf) == n and first_worst <= 0.005 and tail_rel <= 0.03 and (falls or DRY), "steps": n,
            "tolerance_rel_first10_per_step": 0.005, "worst_rel_first10": first_worst, "worst_first10_at_step": first_at,
            "tolerance_rel_last10_mean": 0.03, "rel_last10_mean": tail_rel,
            "worst_rel_loss_vs_fp32_any_step": worst, "worst_at_step": at, "mean_loss_first5": first,
            "mean_loss_last5": last, "loss_falls": falls, "bf16_seconds": rb["seconds"], "fp32_seconds": rf["seconds"],
            "bf16_tokens_per_s": bf[-1].get("tokens_per_s"), "fp32_tokens_per_s": fp[-1].get("tokens_per_s")}


def check_two_ranks_share_the_gpu():
    """EP 2 and TP 2, two ranks on one GPU (host data plane: NCCL refuses two ranks on one GPU), against one
    GPU process with the same global batch (EP 2 is data-parallel 2: one process accumulates 2 micro-batches)."""
    n = steps(10)
    base = SMALL + ["train.steps=%d" % n, "train.deterministic=true", "train.threads=1"] + device()
    out = {"steps": n, "tolerance": 1e-4}
    ok = True
    for name, layout, accum in (("ep2", ["parallel.expert=2"], 2), ("tp2", ["parallel.tensor=2"], 1)):
        single, _ = train(f"{name}_single", base + [f"train.grad_accum_steps={accum}"])
        two, r = train(f"{name}_2ranks", base + layout + ["parallel.data_plane=HOST"], ranks=2,
                       env={"OMP_NUM_THREADS": "1"})
        worst = max(worst_rel(two, single, k)[0] for k in ("loss", "grad_norm"))
        out[name] = {"worst_rel_loss_or_grad_norm": worst, "seconds": r["seconds"], "steps": len(two)}
        ok = ok and len(two) == n and worst <= 1e-4
    return {"pass": ok, **out}


def check_nccl_one_rank():
    """One rank over NCCL (the data plane's collectives run, on a world of one) against the same rank on
    the host data plane: equal losses."""
    n = steps(10)
    base = SMALL + ["train.steps=%d" % n, "train.deterministic=true"] + device()
    nccl, rn = train("nccl_1rank", base + [f"parallel.data_plane={'HOST' if DRY else 'NCCL'}"], ranks=1)
    host, rh = train("host_1rank", base + ["parallel.data_plane=HOST"], ranks=1)
    worst, at = worst_rel(nccl, host)
    return {"pass": len(nccl) == n and worst == 0.0, "steps": n, "worst_rel_loss": worst, "worst_at_step": at,
            "nccl_seconds": rn["seconds"], "host_seconds": rh["seconds"]}


def check_nccl_communicator_tests():
    """tests/multirank/nccl_test.cpp: the NCCL collectives against MPI (one rank: NCCL refuses two ranks on one
    GPU) and MPI's host staging of CUDA tensors (two ranks sharing the GPU)."""
    out, ok = {}, True
    for ranks, flt in ((1, "NcclCommunicator.*:MpiStaging.*"), (2, "MpiStaging.*")):
        r = run(MPIRUN + ["-np", str(ranks), os.path.join(B, "tests/multirank_test"), f"--gtest_filter={flt}", "--gtest_color=no"],
                env={"OMP_NUM_THREADS": "1"}, timeout=180)
        passed = len(re.findall(r"\[       OK \]", r["stdout"]))
        skipped = len(re.findall(r"\[  SKIPPED \]", r["stdout"]))
        failed = len(re.findall(r"\[  FAILED  \]", r["stdout"]))
        good = r["rc"] == 0 and failed == 0 and (DRY or skipped == 0) and passed + skipped > 0
        out[f"np{ranks}"] = {"filter": flt, "passed": passed, "skipped": skipped, "failed": failed, "rc": r["rc"],
                             "seconds": r["seconds"], **({} if good else {"output": tail(r["stdout"] + r["stderr"])})}
        ok = ok and good
    return {"pass": ok, **out}


def check_sync_debug():
    """Steady-state steps under CUDA's sync debug mode "error": the MoE layer in moe-bench (its timed
    iterations), and moe-train from step 3 (MOETRAIN_CUDA_SYNC_DEBUG, csrc/util/cuda_sync_debug.h)."""
    env = {"MOETRAIN_CUDA_SYNC_DEBUG": "error", "MOETRAIN_CUDA_SYNC_DEBUG_AFTER": "2"}
    out = {}
    for name in ("dropless",):  # capacity (padded) runs under the mode in gpu_test
        r = run([os.path.join(B, "bin/moe-bench"), "moe-layer", "--device", "cpu" if DRY else "cuda",
                 "--tokens", "512" if DRY else "4096", "--warmup", "1", "--iters", "3"], env=env, timeout=120)
        line = r["stdout"].strip().splitlines()[-1] if r["stdout"].strip() else "{}"
        out[f"moe_layer_{name}"] = {"rc": r["rc"], "sync_debug": json.loads(line).get("sync_debug") if r["rc"] == 0 else None,
                                    **({} if r["rc"] == 0 else {"error": tail(r["stderr"])})}
    layer_ok = all(v["rc"] == 0 and (DRY or v["sync_debug"] == "error") for v in out.values())
    n = steps(8)
    try:
        rows, r = train("sync_debug", ["train.steps=%d" % n] + device(), env=env)
        announced = "CUDA sync debug mode error from step" in r["stderr"] + r["stdout"]
        out["moe_train"] = {"steps": len(rows), "announced": announced,
                            **({} if announced or DRY else {"error": "moe-train did not turn the mode on (the trainer "
                                                            "sets it only when the model is on a GPU)"})}
        train_ok = len(rows) == n and (announced or DRY)
    except CheckFailed as e:
        out["moe_train"] = {"error": str(e)}
        train_ok = False
    return {"pass": layer_ok and train_ok, **out}


def bench(args):
    r = run([os.path.join(B, "bin/moe-bench")] + args, timeout=180)
    if r["rc"] != 0:
        raise CheckFailed(f"moe-bench {' '.join(args)}: exit {r['rc']}: {tail(r['stderr'])}")
    return json.loads(r["stdout"].strip().splitlines()[-1])


def check_moe_bench():
    """moe-bench on the GPU: the bf16 MoE layer forward + backward against one dense bf16 GEMM of the same
    FLOPs (target >= 0.7x) and fp32; then transformers' MixtralSparseMoeBlock at the same sizes (target:
    ours >= 3x its tokens/s)."""
    size = (["--tokens", "256", "--d-model", "64", "--experts", "8", "--top-k", "2", "--hidden", "128",
             "--warmup", "1", "--iters", "2"] if DRY else
            ["--tokens", "16384", "--d-model", "2048", "--experts", "8", "--top-k", "2", "--hidden", "4096",
             "--warmup", "3", "--iters", "20"])
    dev = ["--device", "cpu" if DRY else "cuda"]
    moe_bf16 = bench(["moe-layer"] + size + dev + ["--precision", "bf16"])
    gemm_bf16 = bench(["gemm"] + size + dev + ["--precision", "bf16"])
    moe_fp32 = bench(["moe-layer"] + size + dev + ["--precision", "fp32"])
    dense_bf16 = bench(["dense-swiglu"] + size + dev + ["--precision", "bf16"])
    ratio_gemm = moe_bf16["matmul_gflop_per_s"] / gemm_bf16["matmul_gflop_per_s"]
    vals = dict(zip(size[0::2], size[1::2]))
    r = run([sys.executable, os.path.join(B, "launch/mixtral_bench.py"), "--device", "cpu" if DRY else "cuda",
             "--tokens", vals["--tokens"], "--d-model", vals["--d-model"], "--experts", vals["--experts"],
             "--top-k", vals["--top-k"], "--hidden", vals["--hidden"], "--warmup", vals["--warmup"],
             "--iters", vals["--iters"]], timeout=240)
    lines = [json.loads(x) for x in r["stdout"].splitlines() if x.startswith("{")]
    # The target is judged against the block's eager experts (its reference code path, the same whether
    # transformers is installed or the copy runs); grouped_mm, when it runs, is reported beside it.
    eager = [x for x in lines if "eager" in x.get("implementation", "") and "tokens_per_s" in x]
    mixtral = {"runs": lines} if eager else {"runs": lines, "error": tail(r["stderr"] or r["stdout"]) or "no eager run"}
    ratio_mixtral = moe_bf16["tokens_per_s"] / eager[0]["tokens_per_s"] if eager else None
    grouped = [x for x in lines if "grouped_mm" in x.get("implementation", "") and "tokens_per_s" in x]
    if grouped:
        mixtral["moe_vs_grouped_mm_tokens_per_s"] = moe_bf16["tokens_per_s"] / grouped[0]["tokens_per_s"]
    if DRY:  # the copy used where transformers is missing equals the installed transformers' block
        v = run([sys.executable, os.path.join(B, "launch/mixtral_bench.py"), "--verify-copy", "--d-model", "32",
                 "--hidden", "64"], timeout=120)
        mixtral["copy_equals_installed_transformers"] = v["rc"] == 0
        if v["rc"] != 0:
            mixtral["error"] = "the copied Mixtral block differs from the installed transformers: " + tail(v["stdout"] + v["stderr"])
    return {"pass": "error" not in mixtral,  # the check is that the benchmarks run; targets are reported
            "moe_layer_bf16": moe_bf16, "gemm_bf16": gemm_bf16, "moe_layer_fp32": moe_fp32,
            "dense_swiglu_bf16": dense_bf16, "mixtral_block": mixtral,
            "targets": {"moe_vs_gemm_tflops": {"ratio": ratio_gemm, "target": 0.7, "met": ratio_gemm >= 0.7},
                        "moe_vs_mixtral_tokens_per_s": {"ratio": ratio_mixtral, "target": 3.0,
                                                        "met": ratio_mixtral is not None and ratio_mixtral >= 3.0}}}


def check_checkpoints_cross_devices():
    """A run saved on the GPU resumes on the CPU, and one saved on the CPU resumes on the GPU: both match an
    uninterrupted GPU run (deterministic, fp32) after the resume, within the fp32 GPU-vs-CPU tolerance."""
    n = steps(6)
    half = max(1, n // 2)
    base = SMALL + ["train.steps=%d" % n, "train.deterministic=true", f"checkpoint.interval={half}"]
    whole, _ = train("ckpt_whole_gpu", base + device())
    out, ok = {"steps": n, "resumed_at": half, "tolerance": 1e-4}, True
    for name, first, second in (("gpu_to_cpu", device(), ["train.device=CPU"]), ("cpu_to_gpu", ["train.device=CPU"], device())):
        train(f"ckpt_{name}", base + first + [f"train.exit_interval={half}"])
        resumed, r = train(f"ckpt_{name}", base + second, fresh=False)
        worst, at = worst_rel(resumed, whole)
        out[name] = {"worst_rel_loss": worst, "worst_at_step": at, "resumed": "resumed from" in r["stdout"]}
        ok = ok and len(resumed) == n and worst <= 1e-4 and "resumed from" in r["stdout"]
    return {"pass": ok, **out}


CHECKS = [("cuda_unit_tests", check_unit_tests), ("fp32_gpu_vs_cpu", check_fp32_gpu_vs_cpu),
          ("checkpoints_cross_devices", check_checkpoints_cross_devices),
          ("bf16_gpu_tracks_fp32", check_bf16_gpu), ("ep2_tp2_two_ranks_share_gpu", check_two_ranks_share_the_gpu),
          ("nccl_one_rank_equals_host", check_nccl_one_rank), ("nccl_communicator_tests", check_nccl_communicator_tests),
          ("sync_debug_steady_state", check_sync_debug), ("moe_bench", check_moe_bench)]


def gpu_info():
    r = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], timeout=30) \
        if not DRY else {"rc": 1, "stdout": ""}
    return r["stdout"].strip() if r["rc"] == 0 else None


def main():
    os.makedirs(WORK, exist_ok=True)
    manifest = json.load(open(os.path.join(B, "MANIFEST.json")))
    report = {"dry_run": DRY, "device": DEVICE, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "host": platform.node(), "gpu": gpu_info(), "python": sys.version.split()[0],
              "bundle": {k: manifest.get(k) for k in ("commit", "tree_dirty", "torch", "glibc_needed", "bytes")},
              "checks": {}}
    if opts.proof:
        report["bundle_proof"] = json.load(open(opts.proof))
    for name, fn in CHECKS:
        t0 = time.time()
        if time.time() - START > opts.budget_s:
            result = {"pass": False, "error": f"not run: the {opts.budget_s:.0f} s budget was spent"}
        else:
            try:
                result = fn()
            except CheckFailed as e:
                result = {"pass": False, "error": str(e)}
            except Exception as e:  # a bug in the plan must not lose the other checks' results
                result = {"pass": False, "error": f"{type(e).__name__}: {e}"}
        result["seconds_total"] = round(time.time() - t0, 1)
        if DRY:
            result["dry_run"] = True
        report["checks"][name] = result
        print(f"[gpu-check] {name}: {'pass' if result['pass'] else 'FAIL'} ({result['seconds_total']} s)"
              + ("" if result["pass"] else ": " + str(result.get("error") or json.dumps(result))[:400]), flush=True)
        with open(opts.out, "w") as f:  # written after every check: a killed run keeps what it did
            json.dump(report, f, indent=1)
    report["seconds"] = round(time.time() - START, 1)
    report["pass"] = all(c["pass"] for c in report["checks"].values()) and \
        report.get("bundle_proof", {}).get("pass", True)
    with open(opts.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"[gpu-check] {'PASS' if report['pass'] else 'FAIL'}{' (dry run, CPU)' if DRY else ''}: "
          f"{sum(c['pass'] for c in report['checks'].values())}/{len(CHECKS)} checks in {report['seconds']} s; "
          f"report {opts.out}")
    return 0 if report["pass"] else 1


sys.exit(main())
