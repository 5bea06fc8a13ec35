"""examples/generate.py, the README's runtime demo: it runs on the CPU, and a bad flag is one line naming it."""
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("generate_example", Path(__file__).parents[2] / "examples" / "generate.py")
generate = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(generate)


def test_generates_with_a_tiny_random_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOVLLM_CACHE", str(tmp_path))
    generate.main(["--batch_size", "2", "--max_tokens", "3", "--temperature", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.count("Completion (length): ") == 2 and "\n6 tokens in " in out


@pytest.mark.parametrize("args, error", [
    (["--batch_size", "0"], "argument --batch_size: must be >= 1, got 0"),
    (["--seq_len", "x"], "argument --seq_len: invalid positive_int value: 'x'"),
    (["--temperature", "-1"], "temperature must be a finite float >= 0, got -1.0"),
    (["--model", "/nonexistent"], "model_path '/nonexistent' is not a folder with a config.json"),
])
def test_a_bad_flag_is_one_line(capsys, args, error):
    with pytest.raises(SystemExit) as info:
        generate.main(args)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f": error: {error}")
