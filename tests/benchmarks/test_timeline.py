"""benchmarks/timeline.py on the CPU with the tiny model: one row per launched step, the requests' first-token times,
the prefill figure and a summary whose host shares cover the wall time; and host_step.py's table."""
import csv
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_timeline_of_one_request(tmp_path):
    # One request of the workload (964 prompt tokens, 724 output tokens); 20 fresh prompts for the prefill figure.
    result = run("benchmarks/timeline.py", "--shape", "tiny-qwen3", "--num_seqs", "1", "--prefill_prompts", "20",
                 "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    steps = read(tmp_path / "timeline.csv")
    assert [s["kind"] for s in steps] == ["prefill"] + ["decode"] * 723  # the prefill samples the first token
    assert steps[0]["tokens"] == "964" and steps[0]["sampled"] == "1"
    assert [int(s["context_tokens"]) for s in steps[1:3]] == [965, 966]
    assert all(float(s["host_forward_ms"]) > 0 for s in steps)
    assert all(s["gpu_forward_ms"] == "" and s["graph_batch"] == "" for s in steps)  # CPU: no events, no graphs
    requests = read(tmp_path / "requests.csv")
    assert [(r["prompt_tokens"], r["output_tokens"]) for r in requests] == [("964", "724")]
    assert 0 < float(requests[0]["ttft_s"]) < float(steps[2]["launch_s"])
    assert read(tmp_path / "compiles.csv") == []
    summary = (tmp_path / "summary.txt").read_text()
    assert summary == result.stdout
    assert "724 output tokens" in summary and "time to first token, all 1 requests" in summary
    assert re.search(r"prefill at 8192-token steps: 1 steps", summary)
    host = summary.split("host, where")[1].split("Triton")[0]
    shares = [float(m) for m in re.findall(r" s +([\d.]+)%", host)]
    assert len(shares) == 8 and abs(sum(shares) - 100) < 0.5


def test_timeline_refuses_bad_counts(tmp_path):
    result = run("benchmarks/timeline.py", "--num_seqs", "0", "--out", str(tmp_path))
    assert result.returncode != 0 and "--num_seqs must be >= 1" in result.stderr


def test_host_step_prints_a_row_per_batch_bucket():
    result = run("benchmarks/host_step.py", "--num_seqs", "8")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["1-64"] and int(rows[0][1]) == 806  # the longest request's 807 tokens less one


def test_decode_order_model_finds_longest_first_no_slower():
    result = run("benchmarks/decode_order_model.py")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert len(rows) == 12
    assert all(1.0 <= float(r[4]) <= float(r[3]) for r in rows)  # longest first: never more tail than arrival order
