"""moe-ablate on a two-variant folder with a tiny budget: the report's table matches the metrics files,
the figures are valid SVG, and a run stopped by a failing variant resumes without redoing the finished one."""
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
broken = os.path.join(variants, "b_bias.textproto")
with open(broken, "w") as f:
    f.write('base: "base.textproto"\nrouting { aux_loss_coeff: 0 bias_update_rat: 0.001 }\n')  # typo: fails

out = os.path.join(work, "out")
ablate = [os.path.join(BIN, "moe-ablate"), variants, "--out", out]
first = subprocess.run(ablate, capture_output=True, text=True, timeout=600)
check(first.returncode == 1, f"the broken variant stops the run:\n{first.stdout}\n{first.stderr}")
check("variant b_bias failed" in first.stderr, first.stderr)
done_metrics = os.path.join(out, "runs/a_switch/metrics.jsonl")
before = os.stat(done_metrics).st_mtime_ns

with open(broken, "w") as f:
    f.write('base: "base.textproto"\nrouting { aux_loss_coeff: 0 bias_update_rate: 0.001 }\n')
second = subprocess.run(ablate, capture_output=True, text=True, timeout=600)
check(second.returncode == 0, f"second run:\n{second.stdout}\n{second.stderr}")
check("a_switch: already finished, skipped" in second.stdout, second.stdout)
check(os.stat(done_metrics).st_mtime_ns == before, "the finished variant was not retrained")

report = open(os.path.join(out, "report.md")).read()
for name in ("a_switch", "b_bias"):
    rows = [json.loads(line) for line in open(os.path.join(out, "runs", name, "metrics.jsonl"))]
    evals = [r for r in rows if "val_loss" in r]
    mean = lambda key: sum(r[key] for r in rows) / len(rows)
    line = next(l for l in report.splitlines() if l.startswith(f"| {name} |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    check(cells[1] == str(rows[-1]["step"]), f"{name} steps")
    check(cells[2] == f"{evals[-1]['val_loss']:.4f}", f"{name} val loss {cells[2]} vs {evals[-1]['val_loss']}")
    check(cells[3] == f"{evals[-1]['val_ppl']:.2f}", f"{name} val ppl")
    check(cells[4] == f"{evals[-1]['val_max_vio']:.3f}", f"{name} val MaxVio_global")
    check(cells[5] == f"{mean('max_vio'):.3f}", f"{name} mean batch MaxVio {cells[5]} vs {mean('max_vio')}")
    check(cells[6] == f"{mean('dropped_frac'):.4f}", f"{name} dropped")
    check(cells[7] == f"{mean('tokens_per_s'):.0f}", f"{name} tokens/s")
for fig in ["val_loss.svg", "max_vio.svg", "load_a_switch.svg", "domains_b_bias.svg"]:
    root = ET.parse(os.path.join(out, "figures", fig)).getroot()
    check(root.tag.endswith("svg"), f"{fig} is SVG")
    check(f"figures/{fig}" in report, f"{fig} embedded in the report")
print("ok: report table matches the metrics files; resume skipped the finished variant")

bad = subprocess.run(ablate + ["--parallel", "0"], capture_output=True, text=True)
check(bad.returncode == 2 and "--parallel 0: give a whole number of variants >= 1" in bad.stderr, bad.stderr)

# --parallel 2: both variants at once (console output in each run's train.log); same numbers.
out_par = os.path.join(work, "out_parallel")
third = subprocess.run(ablate[:2] + ["--out", out_par, "--parallel", "2", "--set", "train.threads=1"],
                       capture_output=True, text=True, timeout=600)
check(third.returncode == 0, f"parallel run:\n{third.stdout}\n{third.stderr}")
for name in ("a_switch", "b_bias"):
    check(os.path.exists(os.path.join(out_par, "runs", name, "train.log")), f"{name}: train.log")
    seq = [json.loads(line) for line in open(os.path.join(out, "runs", name, "metrics.jsonl"))]
    par = [json.loads(line) for line in open(os.path.join(out_par, "runs", name, "metrics.jsonl"))]
    check(len(seq) == len(par), f"{name}: same steps")
    for a, b in zip(seq, par):
        check(abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), f"{name} step {a['step']}: {a['loss']} vs {b['loss']}")
check("--parallel 2" in open(os.path.join(out_par, "report.md")).read(), "the report names the command")
print("ok: --parallel 2 trains both variants at once with the same losses")
