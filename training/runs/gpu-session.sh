#!/usr/bin/env bash
# One short GPU lease, start to finish: NExT iteration 1 of SmolLM2-135M-Instruct (smollm2-mbppr-gpu.toml),
# then the comparison table (compare-gpu.toml: greedy and proxy pass@1 everywhere, pass@k on HeFix+).
# Every stage runs under a time limit that keeps the whole within BUDGET seconds; stages append what they
# produce as they go, so one cut short keeps its work and the next stage uses it. Run it from the repo root
# with nextls importable (pip install -e ".[train]", or PYTHONPATH=server:training plus torch, transformers,
# peft, accelerate, gguf, jinja2, tqdm):
#   training/runs/gpu-session.sh [BUDGET_SECONDS] [RESULTS_DIR]
# Each stage's output goes to RESULTS_DIR/<stage>.log (default training/runs/out/gpu-session). It ends by
# packing the run's logs, summaries, kept samples, peft adapter and the comparison's cells into
# RESULTS_DIR/results.tar.gz, and every sample drawn into RESULTS_DIR/samples.tar.gz.
set -u
budget=${1:-540}
results=${2:-training/runs/out/gpu-session}
reserve=25 # seconds kept for the report and the packing
start=$SECONDS
run_config=${RUN_CONFIG:-training/runs/smollm2-mbppr-gpu.toml}
compare_config=${COMPARE_CONFIG:-training/runs/compare-gpu.toml}
train_cli=(python3 -m nextls_train.cli)
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false
mkdir -p "$results"

stage() { # stage NAME CAP COMMAND...: COMMAND for at most CAP seconds, and never into the reserve
  local name=$1 cap=$2
  shift 2
  local limit=$((budget - reserve - (SECONDS - start)))
  ((cap < limit)) && limit=$cap
  if ((limit < 15)); then
    echo "== $name: skipped (no time left)"
    return
  fi
  echo "== $name: at most ${limit}s (t=$((SECONDS - start))s)"
  local t0=$SECONDS log="$results/${name%% *}.log"
  timeout -s INT -k 15 "$limit" "$@" >"$log" 2>&1
  local status=$?
  # The log's last messages, without progress bars and tracebacks (the log has them).
  tr '\r' '\n' <"$log" | grep -v -e '^ ' -e '^Traceback' -e '%|' -e '^$' | tail -n 4
  echo "== $name: exit $status after $((SECONDS - t0))s"
}

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import sys, torch, transformers, peft, accelerate; print("python", sys.version.split()[0], "torch",
torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "peft",
peft.__version__, "accelerate", accelerate.__version__)'
echo "cpus $(nproc)"
echo "== sandbox check: a reference fix must verify"
python3 -c '
from nextls_train.config import FilterConfig
from nextls_train.evaluate import dataset_tasks
from nextls_train.filter import TaskFiles, verify_sample
from nextls.prompt import format_answer
from nextls.splice import find_function, function_source

task = dataset_tasks("mbpp-r-dev", 1)[0]
fix = function_source(task.fix_code, find_function(task.fix_code, task.function_name))
files = TaskFiles([task])
print(task.id, verify_sample(task, format_answer("Reference.", fix), files, FilterConfig())["status"])
files.close()
'

stage "sample-train (iteration 1)" 170 "${train_cli[@]}" sample --config "$run_config" --iteration 1 --quiet
stage "filter (iteration 1)" 100 "${train_cli[@]}" filter --config "$run_config" --iteration 1 --quiet
stage "train (iteration 1)" 100 "${train_cli[@]}" train --config "$run_config" --iteration 1 --quiet
# The table first (greedy + proxy, every cell), then pass@k where time is left.
stage "compare-greedy (and proxy)" 200 "${train_cli[@]}" compare --config "$compare_config" --quiet
stage "compare-passk (HeFix+)" 200 "${train_cli[@]}" compare --config "$compare_config" --quiet \
  --set settings.samples=10 --set 'datasets=["hefix-plus"]' --set 'traces=[true]'

echo "== report (t=$((SECONDS - start))s)"
"${train_cli[@]}" compare --config "$compare_config" --report-only --set settings.samples=10 \
  >"$results/report.log" 2>&1
run_out=$(python3 -c "from nextls_train.config import load_config as l; print(l('$run_config').out)")
compare_out=$(python3 -c "from nextls_train.evaluate import load_compare as l; c = l('$compare_config'); print(c.root / c.out_dir)")
cat "$compare_out/results.md"
for marker in "$run_out"/iter-1/*.done.json; do
  echo "$(basename "$marker"): $(python3 -c 'import json, sys; d = json.load(open(sys.argv[1]));
d.pop("per_task_pass", None); print(json.dumps(d)[:700])' "$marker")"
done
tar czf "$results/results.tar.gz" --exclude='*/base' --exclude='*/bases' --exclude='*/samples' \
  --exclude='*/checkpoint*' --exclude='*.gguf' "$run_out" "$compare_out" "$results"/*.log
tar czf "$results/samples.tar.gz" $(find "$run_out" "$compare_out" -type d -name samples)
ls -la "$results"
echo "== done in $((SECONDS - start))s"
