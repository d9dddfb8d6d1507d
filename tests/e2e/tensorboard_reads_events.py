"""The real tensorboard package reads our event file: every scalar of metrics.jsonl, at its step, and
the tokens per expert of expert_load.jsonl. After a resume it shows each step once, with the value
of the run that continued."""
import glob
import json
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common import check, fresh_dir, metrics, moe_train

run = fresh_dir("e2e_tensorboard")
moe_train(run, ["train.steps=6", "train.eval_interval=3"])
files = glob.glob(os.path.join(run, "events.out.tfevents.*"))
check(len(files) == 1, f"one event file, found {files}")
acc = EventAccumulator(run, size_guidance={"scalars": 0})
acc.Reload()
tags = set(acc.Tags()["scalars"])
rows = metrics(run)
for row in rows:
    for key, value in row.items():
        if key == "step":
            continue
        check(key in tags, f"tag {key} in TensorBoard ({sorted(tags)})")
        events = {e.step: e.value for e in acc.Scalars(key)}
        check(row["step"] in events, f"{key} at step {row['step']}")
        check(abs(events[row["step"]] - value) <= 1e-6 * max(1.0, abs(value)), f"{key}@{row['step']}: {events[row['step']]} vs {value}")
check(sorted(e.step for e in acc.Scalars("val_ppl")) == [3, 6], "val_ppl at eval steps")
with open(os.path.join(run, "expert_load.jsonl")) as f:
    loads = [json.loads(line) for line in f]
expert_tags = 0
for load in loads:
    for layer, counts in load["tokens_per_expert"].items():
        for e, c in enumerate(counts):
            tag = f"tokens_per_expert/{layer}/expert{e:03d}"
            check(tag in tags, f"{tag} in TensorBoard")
            events = {ev.step: ev.value for ev in acc.Scalars(tag)}
            check(events.get(load["step"]) == c, f"{tag}@{load['step']}: {events.get(load['step'])} vs {c}")
            expert_tags += 1
check(expert_tags == 6 * 4 * 8, f"tokens per expert of 4 MoE layers x 8 experts at 6 steps, got {expert_tags}")
print(f"ok: {len(tags)} tags over {len(rows)} steps")

# A run that stops at step 6 after its checkpoint at step 4 and resumes there redoes steps 5 and 6:
# TensorBoard must show them once (the resumed run's values), as metrics.jsonl does.
resumed = fresh_dir("e2e_tensorboard_resume")
common = ["train.eval_interval=0", "checkpoint.interval=4", "schedule.warmup_steps=1"]
moe_train(resumed, common + ["train.steps=6", "checkpoint.save_final=false"])
first_run = {r["step"]: r["lr"] for r in metrics(resumed)}
moe_train(resumed, common + ["train.steps=8"])
rows = metrics(resumed)
check([r["step"] for r in rows] == list(range(1, 9)), f"metrics.jsonl steps {[r['step'] for r in rows]}")
acc = EventAccumulator(resumed, size_guidance={"scalars": 0})
acc.Reload()
steps = [e.step for e in acc.Scalars("lr")]
check(steps == list(range(1, 9)), f"TensorBoard shows each step once after the resume, got {steps}")
# The cosine decay spans 5 steps in the first run and 7 in the second, so steps 5 and 6 have different
# learning rates in the two runs: TensorBoard must show the continued run's.
shown = {e.step: e.value for e in acc.Scalars("lr")}
for s in (5, 6):
    check(abs(first_run[s] - rows[s - 1]["lr"]) > 1e-3 * rows[s - 1]["lr"], f"lr@{s} differs between the two runs")
for r in rows:
    check(abs(shown[r["step"]] - r["lr"]) <= 1e-6 * r["lr"], f"lr@{r['step']}: TensorBoard {shown[r['step']]} vs {r['lr']}")
print("ok: resumed run shown once per step")
