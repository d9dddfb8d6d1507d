"""The cost of the network: collectives and training steps on 2 simulated nodes x 2 ranks
(launch/cluster-sim.sh) with the node links shaped by `tc tbf` to each rate given, one cluster per rate.

  sudo python3 tools/bench_cluster_links.py [--rates unshaped,10gbit,1gbit] [--steps 12] [--iters 50]
      [--corpus build/test_corpus] [--out DIR] [--quick]

For each rate:
- `moe-bench collectives` (all-reduce and all-to-all, 8 B to 4 MiB per rank) over 2 nodes x 1 rank (one
  rank per core: the link's cost alone) and over the 4 ranks (half of every rank's peers on the other
  node; 4 ranks share the 2 cores, so small messages also pay scheduling);
- the tiny recipe (on --corpus) for --steps steps in three layouts: EP 2 x DP 2, whose expert groups stay
  within a node (only the gradient reduction crosses the link), EP 4, whose all-to-all crosses it, and
  EP 2 x DP 2 with its gradients reduced during backward in 1 MiB buckets (parallel.grad_bucket_mb).
  Per step (median over the steps after the first two): step time, rank 0's seconds in the expert
  all-to-all (comm_s/ep/all_to_all_v), in the gradient reduction (dp and expert_dp all-reduces), in all
  collectives (comm_s), and the payload (comm_bytes).
Prints JSON lines and a Markdown table (for docs/benchmarks.md); --out keeps the run directories.
Needs root. Uses the named cluster `bench` (MOESIM_CLUSTER), so it runs beside the test suite's cluster.
--quick: one shaped rate, 4 steps, few iterations (the test suite's smoke run, `cluster_links_bench`)."""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = ["bash", os.path.join(ROOT, "launch/cluster-sim.sh")]
ENV = {**os.environ, "MOESIM_CLUSTER": "bench"}
MPI = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1",
       "--mca", "plm_rsh_agent", os.path.join(ROOT, "launch/cluster-sim-rsh.sh"), "--mca", "btl", "self,vader,tcp",
       "--mca", "btl_tcp_if_include", "eth0", "--mca", "oob_tcp_if_include", "eth0"]
LAYOUTS = {"EP 2 x DP 2": ["parallel.expert=2"], "EP 4": ["parallel.expert=4"],
           # the same, its gradients reduced in 1 MiB buckets while backward runs (parallel.grad_bucket_mb)
           "EP 2 x DP 2, buckets": ["parallel.expert=2", "parallel.grad_bucket_mb=1"]}


def cluster_mpirun(args, hostfile, timeout=900, np=4):
    cmd = SIM + ["exec", "node0", "mpirun", "--hostfile", hostfile, "-np", str(np), "--npernode", str(np // 2)] + MPI + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"bench_cluster_links: {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def collectives(bin_dir, hostfile, iters, np):
    out = cluster_mpirun([os.path.join(bin_dir, "moe-bench"), "collectives", "--iters", str(iters), "--warmup",
                          str(max(2, iters // 10))], hostfile, np=np)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def training(bin_dir, corpus, run, layout, steps, hostfile):
    sets = [f"data.train_prefix={corpus}/train", f"data.valid_prefix={corpus}/valid",
            f"data.tokenizer={corpus}/tokenizer.model", "model.vocab_size=512", f"train.steps={steps}",
            "train.eval_interval=0", "checkpoint.interval=0", "checkpoint.save_final=false", "train.threads=1"]
    args = [os.path.join(bin_dir, "moe-train"), "--recipe", os.path.join(ROOT, "recipes/pretrain/tiny.textproto"),
            "--run-dir", run]
    for s in sets + layout:
        args += ["--set", s]
    cluster_mpirun(args, hostfile)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    records = records[2:] or records  # the first steps warm up
    med = lambda key: statistics.median(r.get(key, 0.0) for r in records)
    step_s = statistics.median(r["tokens"] / r["step"] / r["tokens_per_s"] for r in records)
    # the host's time in the gradient reduction: blocking all-reduces, and the waits of those started during
    # backward (their time in flight, "..._async", overlaps the backward)
    grads = statistics.median(sum(v for k, v in r.items() if k.split("/")[1:2] in (["dp"], ["expert_dp"])
                                  and not k.endswith("_async")) for r in records)
    return {"step_ms": 1e3 * step_s, "all_to_all_ms": 1e3 * med("comm_s/ep/all_to_all_v"),
            "grad_reduce_ms": 1e3 * grads, "comm_ms": 1e3 * med("comm_s"), "comm_mb": med("comm_bytes") / 2**20,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records)}


def check_numbers(result):
    """Every figure measured and positive: the sweep's four sizes, both layouts' step and all-to-all."""
    sweeps = [result["collectives 2x1"], result["collectives 2x2"]]
    ok = all(len(sweep) == 4 for sweep in sweeps) and all(
        c[k] > 0 for sweep in sweeps for c in sweep for k in ("all_reduce_us_median", "all_to_all_us_median"))
    ok = ok and all(result[n][k] > 0 for n in LAYOUTS for k in ("step_ms", "all_to_all_ms", "comm_ms", "comm_mb"))
    if not ok:
        sys.exit(f"bench_cluster_links: a figure is missing or not positive at {result['rate']}: {json.dumps(result)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="unshaped,10gbit,1gbit")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--bin", default=os.environ.get("MOETRAIN_BIN", os.path.join(ROOT, "build/bin")))
    p.add_argument("--corpus", default=os.environ.get("MOETRAIN_TEST_CORPUS", os.path.join(ROOT, "build/test_corpus")))
    p.add_argument("--out", default="")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.rates, a.steps, a.iters = "1gbit", 4, 5
    if os.geteuid() != 0:
        print("bench_cluster_links: needs root (it makes network namespaces); run it with sudo", file=sys.stderr)
        sys.exit(77)  # the test suite's code for "skipped"
    if not os.path.exists(os.path.join(a.corpus, "train.bin")) and not os.path.exists(a.corpus):
        sys.exit(f"bench_cluster_links: --corpus {a.corpus} does not exist; make it with the test suite "
                 "(ctest -R corpus_small_prepare) or pass another tokenized corpus")
    out = a.out or tempfile.mkdtemp(prefix="bench_links_")
    os.makedirs(out, exist_ok=True)
    hostfile = os.path.join(out, "hostfile")
    with open(hostfile, "w") as f:
        f.write("node0 slots=2\nnode1 slots=2\n")
    rows = []
    try:
        for rate in a.rates.split(","):
            up = SIM + ["up", "2"] + ([] if rate == "unshaped" else ["--rate", rate])
            subprocess.run(up, check=True, env=ENV, capture_output=True)
            result = {"rate": rate, "collectives 2x1": collectives(a.bin, hostfile, a.iters, 2),
                      "collectives 2x2": collectives(a.bin, hostfile, a.iters, 4)}
            for name, layout in LAYOUTS.items():
                run = os.path.join(out, f"{rate}_{name.replace(' ', '')}")
                shutil.rmtree(run, ignore_errors=True)
                result[name] = training(a.bin, a.corpus, run, layout, a.steps, hostfile)
            check_numbers(result)
            print(json.dumps(result), flush=True)
            rows.append(result)
    finally:
        subprocess.run(SIM + ["down"], env=ENV, capture_output=True)
    print("\nCollectives, median ms per call at 256 KiB / 4 MiB per rank:\n")
    print("| link | all-reduce, 2 x 1 | all-to-all, 2 x 1 | all-reduce, 2 x 2 | all-to-all, 2 x 2 |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = []
        for sweep in ("collectives 2x1", "collectives 2x2"):
            by = {c["bytes"]: c for c in r[sweep]}
            for op in ("all_reduce", "all_to_all"):
                cells.append(" / ".join(f"{by[b][op + '_us_median'] / 1e3:.2f}" if b in by else "-"
                                        for b in (262144, 4194304)))
        print(f"| {r['rate']} | " + " | ".join(cells) + " |")
    print("\nTraining steps (tiny recipe, 2 x 2), median ms per step: step / expert all-to-all / gradient "
          "reduction / all collectives (rank 0), and MiB of collective payload per step:\n")
    print("| link |" + "".join(f" {n} |" for n in LAYOUTS))
    print("|---|" + "---|" * len(LAYOUTS))
    for r in rows:
        print(f"| {r['rate']} |" + "".join(
            f" {t['step_ms']:.0f} / {t['all_to_all_ms']:.0f} / {t['grad_reduce_ms']:.0f} / {t['comm_ms']:.0f}, "
            f"{t['comm_mb']:.1f} |" for t in (r[n] for n in LAYOUTS)))
    if not a.out:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
