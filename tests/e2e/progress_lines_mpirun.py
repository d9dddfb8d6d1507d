"""Under mpirun the progress is whole lines, even though Open MPI gives each rank a pseudo-terminal:
`mpirun -np 2 moe-train ... > file` leaves no carriage return in the file, and every progress line that
is printed (the first step, every logging.log_interval-th and the last) is on a line of its own, once.
(A single process on a terminal redraws one line instead; tests/unit/trainer/progress_line_test.cpp.)"""
import os
import re
import subprocess
import sys

from common import BIN, SMALL_DATA, TINY, check, fresh_dir

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
STEPS, LOG_INTERVAL = 7, 3
small = ["model.d_model=64", "model.num_layers=2", "model.ffn_hidden=128", "model.moe_ffn_hidden=64",
         "train.micro_batch_size=4", "data.seq_len=32", "train.eval_interval=0", "train.eval_sequences=4",
         f"train.steps={STEPS}", f"logging.log_interval={LOG_INTERVAL}", "checkpoint.interval=0",
         "checkpoint.save_final=false", "train.threads=1", "parallel.expert=2"]

run = fresh_dir("progress_lines_mpirun")
os.makedirs(run)
log_path, err_path = os.path.join(run, "train.log"), os.path.join(run, "train.err")

# What the ranks see: with mpirun's stdout in a file, is a rank's stdout still a terminal? (It is with
# Open MPI 4.1, which is what makes the old "\r" redraw appear in the file.) Said, not required.
probe = os.path.join(run, "isatty.log")
with open(probe, "w") as out:
    subprocess.run(MPIRUN + ["-np", "1", sys.executable, "-c", "import os; print(os.isatty(1))"], stdout=out,
                   stderr=subprocess.DEVNULL, timeout=120)
print(f"under mpirun with stdout in a file, a rank's stdout is a terminal: {open(probe).read().strip() or '?'}")

cmd = MPIRUN + ["-np", "2", os.path.join(BIN, "moe-train"), "--recipe", TINY, "--run-dir", run]
for o in SMALL_DATA + small:
    cmd += ["--set", o]
with open(log_path, "w") as out, open(err_path, "w") as err:
    rc = subprocess.run(cmd, stdout=out, stderr=err, timeout=300).returncode
with open(log_path, newline="") as f:  # newline="": keep "\r" as written
    log = f.read()
check(rc == 0, f"mpirun failed ({rc}):\n{log}\n{open(err_path).read()}")
print(log, end="")

check("\r" not in log, f"the log holds {log.count(chr(13))} carriage returns: {log[:400]!r}")
lines = log.split("\n")
for line in lines:
    check(line.count(f"/{STEPS} |") <= 1, f"two progress steps on one line: {line!r}")
printed = [int(m.group(1)) for line in lines if (m := re.match(rf"step (\d+)/{STEPS} \| loss ", line))]
expected = sorted({1, STEPS} | set(range(LOG_INTERVAL, STEPS + 1, LOG_INTERVAL)))
check(printed == expected, f"progress lines for steps {printed}, expected {expected}, each once:\n{log}")
check(sum(f"/{STEPS} |" in line for line in lines) == len(expected), f"a progress line not at a line's start:\n{log}")
print(f"PASS: no carriage return; steps {expected} each on a line of its own, once")
