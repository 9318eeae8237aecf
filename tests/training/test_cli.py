"""`python -m training`: what a person at a terminal sees."""

import json
import subprocess
import sys

from tests.training.conftest import tiny_spec


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True, timeout=300)


def test_a_bad_spec_names_the_field_and_exits_2_without_a_traceback(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("data: {path: x}\nscheduler: {name: multistep, milestones: [2, 1]}\noptimizer: {lr: -1}\n")
    out = run_cli("run", str(spec), "--out", str(tmp_path / "run"))
    assert out.returncode == 2
    assert "scheduler.milestones: must be strictly increasing" in out.stderr
    assert "optimizer.lr: Input should be greater than 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_missing_spec_and_broken_yaml_exit_2(tmp_path):
    assert run_cli("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)).returncode == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    out = run_cli("run", str(broken), "--out", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_a_run_that_fails_exits_1_with_the_reason(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"data: {{path: {tmp_path / 'missing'}}}\n")
    out = run_cli("run", str(spec), "--out", str(tmp_path / "run"))
    assert out.returncode == 1
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_run_trains_and_prints_a_summary(colour_set, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(tiny_spec(colour_set).model_dump_json())
    out = run_cli("run", str(spec), "--out", str(tmp_path / "run"), "--max-steps", "3")
    assert out.returncode == 0, out.stderr
    assert "max_steps" in out.stderr and "val_acc" in out.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_an_offline_pretrained_run_exits_1_naming_the_url_and_the_cache_path(colour_set, tmp_path, monkeypatch):
    from tests.training.test_backbones import unreachable_network

    unreachable_network(monkeypatch)  # the subprocess inherits it
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FT_ALLOW_WEIGHT_DOWNLOADS", raising=False)
    spec = tmp_path / "spec.json"
    spec.write_text(tiny_spec(colour_set, backbone={"name": "resnet18", "weights": "DEFAULT"}).model_dump_json())
    out = run_cli("run", str(spec), "--out", str(tmp_path / "run"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    said = " ".join(out.stderr.split())  # the console wraps long lines
    assert "error (weights_unavailable)" in said
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in said


def test_backbones_lists_the_registry():
    out = run_cli("backbones", "--json")
    rows = json.loads(out.stdout)
    assert len(rows) == 80
    resnet50 = next(r for r in rows if r["name"] == "resnet50")
    assert resnet50["native_size"] == 224 and [w["name"] for w in resnet50["weights"]] == [
        "IMAGENET1K_V1",
        "IMAGENET1K_V2",
    ]


def test_schema_prints_the_json_schema():
    schema = json.loads(run_cli("schema").stdout)
    assert "SGDOptimizer" in schema["$defs"]
