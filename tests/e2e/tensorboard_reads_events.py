"""The real tensorboard package reads our event file: every scalar of metrics.jsonl, at its step."""
import glob
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
print(f"ok: {len(tags)} tags over {len(rows)} steps")
