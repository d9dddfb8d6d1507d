"""CI smoke study: moe-ablate on a study file of 2 variants x 2 seeds of a tiny model. The study is stopped
(SIGTERM: the running training saves a checkpoint), then killed (SIGKILL to its process group), then resumed
to the end; finished runs are never redone and interrupted ones resume from their checkpoints. The statistics
in report.json and report.md are recomputed here from the runs' metrics.jsonl."""
import json
import math
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET

from common import BIN, CORPUS, SOURCE, check, fresh_dir

T975_DF1 = 12.706204736174705  # Student t, 0.975 quantile, 1 degree of freedom (two seeds)

work = fresh_dir("ablate_study")
os.makedirs(os.path.join(work, "variants"))
tiny = os.path.join(SOURCE, "recipes/pretrain/tiny.textproto")
files = {
    "variants/base.textproto":
        f'base: "{tiny}"\n'
        'model { vocab_size: 512 d_model: 64 num_layers: 2 ffn_hidden: 128 moe_ffn_hidden: 64 }\n'
        f'data {{ train_prefix: "{CORPUS}/train" valid_prefix: "{CORPUS}/valid" seq_len: 32 }}\n'
        'train { eval_interval: 30 eval_sequences: 4 micro_batch_size: 4 }\n'
        'schedule { warmup_steps: 4 }\ncheckpoint { interval: 5 keep_last: 1 }\n',
    "variants/a_aux.textproto": 'base: "base.textproto"\nrouting { aux_loss_coeff: 0.01 }\n',
    "variants/b_bias.textproto": 'base: "base.textproto"\nrouting { aux_loss_coeff: 0 bias_update_rate: 0.01 }\n',
    "smoke.textproto": 'variants_dir: "variants"\nbaseline: "a_aux"\nseeds: [1, 2]\nsteps: 60\n',
}
for name, text in files.items():
    with open(os.path.join(work, name), "w") as f:
        f.write(text)
out = os.path.join(work, "out")
ablate = [os.path.join(BIN, "moe-ablate"), os.path.join(work, "smoke.textproto"), "--out", out, "--parallel", "1"]
run_dir = lambda variant, seed: os.path.join(out, "runs", variant, f"seed-{seed}")
complete = lambda variant, seed: os.path.exists(os.path.join(run_dir(variant, seed), ".complete"))


def interrupt(sig, until, what):
    """Starts the study, waits until `until()` holds, sends `sig` (SIGTERM to moe-ablate, SIGKILL to its
    whole process group) and returns (exit code, console output)."""
    log_path = os.path.join(work, f"console-{what}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(ablate, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while not until() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        check(proc.poll() is None, f"{what}: the study ended before it could be interrupted:\n{open(log_path).read()}")
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    return rc, open(log_path).read()


# 1. Stopped by SIGTERM once a_aux/seed-1 finished and a_aux/seed-2 has a checkpoint: the running training
# saves a checkpoint and stops; moe-ablate starts nothing new and says how to continue.
ckpt = lambda variant, seed: os.path.join(run_dir(variant, seed), "checkpoints", "latest")
rc, console = interrupt(signal.SIGTERM, lambda: complete("a_aux", 1) and os.path.exists(ckpt("a_aux", 2)), "stop")
check(rc == 128 + signal.SIGTERM, f"a stopped study exits 143, not {rc}:\n{console}")
check("1/4 runs done" in console and "rerun the same command to continue" in console, console)
check(not complete("a_aux", 2) and not os.path.exists(run_dir("b_bias", 1)), "nothing after the stop\n" + console)
finished_mtime = {(v, s): os.stat(os.path.join(run_dir(v, s), "metrics.jsonl")).st_mtime_ns for v, s in [("a_aux", 1)]}
print("ok: SIGTERM stopped the study after 1 of 4 runs, the running one with a checkpoint")

# 2. Killed (SIGKILL, every process of the study) while b_bias/seed-1 trains: it resumes from its checkpoint.
rc, console = interrupt(signal.SIGKILL, lambda: os.path.exists(ckpt("b_bias", 1)), "kill")
check(rc == -signal.SIGKILL, f"killed: {rc}")
check("1/4 runs done" in console and "3 to train" in console, "the finished run is not redone:\n" + console)
check("resumed from" in console, "a_aux/seed-2 resumed from its checkpoint:\n" + console)
check(complete("a_aux", 2) and not complete("b_bias", 1), "killed during b_bias/seed-1:\n" + console)
finished_mtime[("a_aux", 2)] = os.stat(os.path.join(run_dir("a_aux", 2), "metrics.jsonl")).st_mtime_ns
print("ok: killed during the third run; the second had resumed from its checkpoint and finished")

# 3. Resumed to the end: finished runs untouched, the killed run resumed, the report written.
final = subprocess.run(ablate, capture_output=True, text=True, timeout=120)
check(final.returncode == 0, f"final run:\n{final.stdout}\n{final.stderr}")
check("2/4 runs done" in final.stdout and "2 to train" in final.stdout, final.stdout)
check("resumed from" in final.stdout.split("b_bias/seed-2")[0], "b_bias/seed-1 resumed:\n" + final.stdout)
check("4/4 runs done" in final.stdout and "ETA" in final.stdout, final.stdout)
for key, mtime in finished_mtime.items():
    check(os.stat(os.path.join(run_dir(*key), "metrics.jsonl")).st_mtime_ns == mtime, f"{key} was not retrained")
print("ok: resumed to the end without redoing the 2 finished runs")


# 4. The statistics, recomputed from the metrics files.
def run_values(variant, seed):
    by_step = {}
    for line in open(os.path.join(run_dir(variant, seed), "metrics.jsonl")):
        row = json.loads(line)
        by_step[row["step"]] = row  # a replayed step's later row wins
    rows = [by_step[s] for s in sorted(by_step)]
    check(rows[-1]["step"] == 60, f"{variant}/{seed}: 60 steps, one row each")
    last_eval = [r for r in rows if "val_loss" in r][-1]
    quarter = rows[len(rows) - (len(rows) + 3) // 4:]
    values = {k: v for k, v in last_eval.items()
              if k.startswith("val_") and not k.startswith(("val_max_vio/", "val_loss/"))}
    values["batch_max_vio"] = sum(r["max_vio"] for r in quarter) / len(quarter)
    values["dropped_frac"] = sum(r["dropped_frac"] for r in rows) / len(rows)
    values["tokens_per_s"] = sum(r["tokens_per_s"] for r in rows) / len(rows)
    return values


def interval(xs):
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = T975_DF1 * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


def close(a, b):
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


report = json.load(open(os.path.join(out, "report.json")))
check(report["baseline"] == "a_aux" and report["seeds"] == [1, 2], "study in report.json")
mine = {v: [run_values(v, s) for s in (1, 2)] for v in ("a_aux", "b_bias")}
for variant in report["variants"]:
    name, runs = variant["name"], mine[variant["name"]]
    check(set(variant["stats"]) == set(runs[0]), f"{name}: metrics {sorted(variant['stats'])}")
    check("val_ppl/ru" in variant["stats"] and "val_max_vio" in variant["stats"], f"{name}: per-domain, MaxVio_global")
    for key, got in variant["stats"].items():
        want = interval([r[key] for r in runs])
        for field in want:
            check(close(got[field], want[field]), f"{name} {key} {field}: {got[field]} vs {want[field]}")
    for key, got in variant["vs_baseline"].items():
        want = interval([a[key] - b[key] for a, b in zip(runs, mine["a_aux"])])
        for field in want:
            check(close(got[field], want[field]), f"{name} - a_aux {key} {field}: {got[field]} vs {want[field]}")
        check(got["significant"] == (want["lo"] > 0 or want["hi"] < 0), f"{name} {key} significance")
check(mine["a_aux"][0]["val_ppl"] != mine["a_aux"][1]["val_ppl"], "the seeds give different runs")
print("ok: report.json's intervals and paired differences equal those recomputed from metrics.jsonl")

md = open(os.path.join(out, "report.md")).read()
ppl = interval([r["val_ppl"] for r in mine["b_bias"]])
cell = f"{ppl['mean']:.2f} ± {ppl['std']:.2f} [{ppl['lo']:.2f}, {ppl['hi']:.2f}]"
check(f"| b_bias | 60 | {cell} |" in md, f"report.md summary row for b_bias ({cell}):\n{md}")
d = report["variants"][1]["vs_baseline"]["val_ppl"]
words = "no difference resolved at n=2" if not d["significant"] else "than a_aux (95% interval excludes 0, n=2)"
check(words in md.split("## Validation perplexity per data domain")[0], f"verdict '{words}' in report.md")
for fig in ["val_ppl.svg", "val_ppl_vs_baseline.svg", "val_max_vio.svg", "val_loss.svg", "max_vio.svg",
            "load_a_aux.svg", "domains_b_bias.svg"]:
    check(ET.parse(os.path.join(out, "figures", fig)).getroot().tag.endswith("svg"), f"{fig} is SVG")
    check(f"figures/{fig}" in md, f"{fig} in report.md")
print("ok: report.md shows the same numbers and words; the figures are SVG")

with open(os.path.join(work, "smoke.textproto"), "w") as f:
    f.write(files["smoke.textproto"].replace("steps: 60", "steps: 80"))
other_budget = subprocess.run(ablate, capture_output=True, text=True)
check(other_budget.returncode == 1 and "finished at step 60 but the study now asks 80 steps; give another budget its "
      "own --out folder" in other_budget.stderr, "a changed budget is refused:\n" + other_budget.stderr)

bad = subprocess.run([os.path.join(BIN, "moe-ablate"), os.path.join(work, "variants/a_aux.textproto")],
                     capture_output=True, text=True)
check(bad.returncode == 1 and 'unknown field "base" in Study' in bad.stderr, "a recipe is not a study:\n" + bad.stderr)
print("ok: a recipe given as the study is refused naming the field")
