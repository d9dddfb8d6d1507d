"""moe-ablate on a three-variant folder (a study with one seed, 1234) with a tiny budget: a bad recipe is refused
before anything trains, the report's table matches the metrics files, the figures are valid SVG, and a study
stopped by a failing run (nothing new starts after it) resumes without redoing the finished one."""
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET

from common import BIN, CORPUS, SOURCE, check, fresh_dir

work = fresh_dir("ablate_work")
variants = os.path.join(work, "variants")
os.makedirs(variants)
tiny = os.path.join(SOURCE, "recipes/pretrain/tiny.textproto")
with open(os.path.join(variants, "base.textproto"), "w") as f:
    f.write(f'base: "{tiny}"\n'
            f'model {{ vocab_size: 512 d_model: 64 num_layers: 2 ffn_hidden: 128 moe_ffn_hidden: 64 }}\n'
            f'data {{ train_prefix: "{CORPUS}/train" valid_prefix: "{CORPUS}/valid" seq_len: 32 }}\n'
            'train { steps: 6 eval_interval: 3 eval_sequences: 4 micro_batch_size: 4 }\n'
            'schedule { warmup_steps: 2 }\ncheckpoint { interval: 3 }\n')
with open(os.path.join(variants, "a_switch.textproto"), "w") as f:
    f.write('base: "base.textproto"\nrouting { aux_loss_coeff: 0.01 }\n')
with open(os.path.join(variants, "c_seq.textproto"), "w") as f:
    f.write('base: "base.textproto"\nrouting { aux_loss_coeff: 0 seq_aux_loss_coeff: 0.01 }\n')
broken = os.path.join(variants, "b_bias.textproto")
with open(broken, "w") as f:
    f.write('base: "base.textproto"\nrouting { aux_loss_coeff: 0 bias_update_rat: 0.001 }\n')  # typo

out = os.path.join(work, "out")
ablate = [os.path.join(BIN, "moe-ablate"), variants, "--out", out, "--parallel", "1"]
typo = subprocess.run(ablate, capture_output=True, text=True, timeout=600)
check(typo.returncode == 1 and "variant b_bias" in typo.stderr and 'did you mean "bias_update_rate"' in typo.stderr,
      f"a recipe typo is refused before training:\n{typo.stdout}\n{typo.stderr}")
check(not os.path.exists(os.path.join(out, "runs")), "nothing trained for a study with a bad recipe")

with open(broken, "w") as f:  # loads, but fails when it trains: its training data does not exist
    f.write('base: "base.textproto"\nrouting { aux_loss_coeff: 0 bias_update_rate: 0.001 }\n'
            'data { train_prefix: "/nonexistent/train" }\n')
first = subprocess.run(ablate, capture_output=True, text=True, timeout=600)
check(first.returncode == 1, f"the failing run stops the study:\n{first.stdout}\n{first.stderr}")
check("run b_bias/seed-1234 failed" in first.stderr, first.stderr)
check(not os.path.exists(os.path.join(out, "runs/c_seq")), "nothing starts after a failed run")
done_metrics = os.path.join(out, "runs/a_switch/seed-1234/metrics.jsonl")
before = os.stat(done_metrics).st_mtime_ns

with open(broken, "w") as f:
    f.write('base: "base.textproto"\nrouting { aux_loss_coeff: 0 bias_update_rate: 0.001 }\n')
second = subprocess.run(ablate, capture_output=True, text=True, timeout=600)
check(second.returncode == 0, f"second run:\n{second.stdout}\n{second.stderr}")
check("3 variants x 1 seeds: 1/3 runs done" in second.stdout and "2 to train" in second.stdout, second.stdout)
check(os.stat(done_metrics).st_mtime_ns == before, "the finished run was not retrained")

report = open(os.path.join(out, "report.md")).read()
for name in ("a_switch", "b_bias", "c_seq"):
    rows = [json.loads(line) for line in open(os.path.join(out, "runs", name, "seed-1234", "metrics.jsonl"))]
    evals = [r for r in rows if "val_loss" in r]
    mean = lambda key, rs=rows: sum(r[key] for r in rs) / len(rs)
    line = next(l for l in report.splitlines() if l.startswith(f"| {name} |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    check(cells[1] == str(rows[-1]["step"]), f"{name} steps")
    check(cells[2] == f"{evals[-1]['val_ppl']:.2f}", f"{name} val ppl {cells[2]} vs {evals[-1]['val_ppl']}")
    check(cells[3] == f"{evals[-1]['val_max_vio']:.3f}", f"{name} val MaxVio_global")
    last_quarter = mean("max_vio", rows[len(rows) - (len(rows) + 3) // 4:])
    check(cells[4] == f"{last_quarter:.3f}", f"{name} batch MaxVio over the last quarter {cells[4]} vs {last_quarter}")
    check(cells[5] == f"{mean('dropped_frac'):.4f}", f"{name} dropped")
    check(cells[6] == f"{mean('tokens_per_s'):.0f}", f"{name} tokens/s")
check("one seed: no interval" in report, "one seed: no interval, said in words")
for fig in ["val_loss.svg", "max_vio.svg", "val_ppl.svg", "load_a_switch.svg", "domains_b_bias.svg"]:
    root = ET.parse(os.path.join(out, "figures", fig)).getroot()
    check(root.tag.endswith("svg"), f"{fig} is SVG")
    check(f"figures/{fig}" in report, f"{fig} embedded in the report")
print("ok: report table matches the metrics files; resume skipped the finished run")

bad = subprocess.run(ablate + ["--parallel", "0"], capture_output=True, text=True)
check(bad.returncode == 2 and "--parallel 0: give a whole number of runs >= 1" in bad.stderr, bad.stderr)

# --parallel 2: both variants at once (console output in each run's train.log); same numbers.
out_par = os.path.join(work, "out_parallel")
third = subprocess.run(ablate[:2] + ["--out", out_par, "--parallel", "2", "--set", "train.threads=1"],
                       capture_output=True, text=True, timeout=600)
check(third.returncode == 0, f"parallel run:\n{third.stdout}\n{third.stderr}")
for name in ("a_switch", "b_bias"):
    check(os.path.exists(os.path.join(out_par, "runs", name, "seed-1234", "train.log")), f"{name}: train.log")
    seq = [json.loads(line) for line in open(os.path.join(out, "runs", name, "seed-1234", "metrics.jsonl"))]
    par = [json.loads(line) for line in open(os.path.join(out_par, "runs", name, "seed-1234", "metrics.jsonl"))]
    check(len(seq) == len(par), f"{name}: same steps")
    for a, b in zip(seq, par):
        check(abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), f"{name} step {a['step']}: {a['loss']} vs {b['loss']}")
check("--parallel 2" in open(os.path.join(out_par, "report.md")).read(), "the report names the command")
print("ok: --parallel 2 trains both variants at once with the same losses")
