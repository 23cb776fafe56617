"""`opd fetch RECIPE`: the recipe's hub datasets, benchmarks and models into the hub cache, from
a local stand-in of the hub (tests/hub_standin.py: a directory of repo clones; no internet
here), and runs that then read the cache with the hub offline, or refuse in one line, before
anything is written, when something they need is neither cached nor reachable."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO
from tests.hub_standin import MODEL_REPO, make_hub_standin

TML = "recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml"
QWEN3 = "recipes/opd-qwen3-32b-to-8b-base-4n8g.yaml"
TINY_PAIR = [f"student.path={REPO}/assets/tiny-bpe/student-init", f"teacher.path={REPO}/assets/tiny-bpe/teacher",
             "student.dtype=float32", "teacher.dtype=float32", "student.flops_name=null", "teacher.flops_name=null",
             "parallel.tp=1", "parallel.dp=1", "cluster.profile=local-cpu", "cluster.gpus_per_node=0",
             "engines.device=cpu"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    return make_hub_standin(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict:
    """A fresh cache, the hub offline, the datasets library's own cache in tmp."""
    values = {"OPD_HUB_CACHE": str(tmp_path / "cache"), "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
              "HF_HUB_OFFLINE": "1", "OPD_MODEL_DIR": str(tmp_path / "models"), "PYTHONPATH": str(REPO)}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(REPO)
    return dict(os.environ)


def opd(env: dict, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "opd_megatron", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def files_under(path: Path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_fetch_fills_the_cache_and_a_run_reads_it_with_the_hub_offline(hub, env, tmp_path):
    cache = tmp_path / "cache"
    proc = opd(env, "fetch", QWEN3, "--mirror", str(hub))
    assert proc.returncode == 0, proc.stderr
    for key in ("data.path", "eval.benchmarks.aime24", "eval.benchmarks.aime25", "eval.benchmarks.math500",
                "eval.benchmarks.gpqa_diamond"):
        assert f"fetched  {key}:" in proc.stdout, proc.stdout
    deepmath = cache / "datasets/zwhe99/DeepMath-103K/default/train.parquet"
    gpqa = cache / "datasets/Idavidrein/gpqa/gpqa_diamond/train.parquet"
    assert deepmath.is_file() and gpqa.is_file()
    meta = json.loads(deepmath.with_suffix(".json").read_text())
    assert meta["rows"] == 1000 and meta["source"] == str(hub) and {"question", "final_answer"} <= set(meta["columns"])
    assert json.loads(gpqa.with_suffix(".json").read_text())["rows"] == 20  # the gpqa_diamond config, not main
    assert not [f for f in files_under(cache) if f.endswith(".part")]
    again = opd(env, "fetch", QWEN3, "--mirror", str(hub))
    assert again.returncode == 0 and "fetched" not in again.stdout and again.stdout.count("cached ") == 5

    # a run (the rehearsal: its every check, tiny models) reads the cache with the hub offline
    from opd_megatron.run.preflight import load_and_validate

    cfg, _ = load_and_validate(QWEN3, ["run.rehearse=true"])
    assert (cfg.data.source, cfg.data.path) == ("parquet", str(deepmath))
    assert cfg.eval.benchmark_files["gpqa_diamond"] == str(gpqa)
    assert set(cfg.eval.benchmark_files) == {"aime24", "aime25", "math500", "gpqa_diamond"}
    shown = opd(env, "validate", QWEN3, "--rehearse")
    assert shown.returncode == 0, shown.stderr
    assert f"[cache] data.path: 'zwhe99/DeepMath-103K' -> '{deepmath}'" in shown.stdout
    assert f"[cache] read from {cache}" in shown.stdout


def test_a_run_refuses_in_one_line_when_neither_cached_nor_reachable(hub, env, tmp_path):
    out = tmp_path / "runs"
    proc = opd(env, "run", TML, *TINY_PAIR, f"run.output_dir={out}")
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "data.path: zwhe99/DeepMath-103K (split train) is not in the hub cache" in err
    assert "HF_HUB_OFFLINE=1" in err and "opd fetch" in err and "eval.benchmarks.aime24" in err
    assert not out.exists()
    # the data alone fetched (the benchmark file given): the run passes that check
    cached = opd(env, "fetch", TML, "--mirror", str(hub), f"eval.benchmark_files={{aime24: {REPO}/assets/data/math-tiny/aime24.jsonl}}")
    assert cached.returncode == 0 and "fetched  data.path" in cached.stdout and "aime24" not in cached.stdout
    proc = opd(env, "run", TML, *TINY_PAIR, f"run.output_dir={out}")
    assert proc.returncode == 2 and "eval.benchmarks.aime24" in proc.stderr and "data.path" not in proc.stderr
    assert not out.exists()
    # the plan on paper says it and goes on
    shown = opd(env, "validate", TML)
    assert shown.returncode == 0, shown.stderr
    assert "eval.benchmarks.aime24: HuggingFaceH4/aime_2024 (split train) is not in the hub cache" in shown.stdout
    assert "`opd run` would refuse" in shown.stdout


def test_fetch_failure_is_one_line_and_leaves_no_partial_entry(hub, env, tmp_path):
    partial = tmp_path / "partial-hub"
    partial.mkdir()
    (partial / "zwhe99").symlink_to(hub / "zwhe99")  # the dataset, none of the benchmarks
    proc = opd(env, "fetch", TML, "--mirror", str(partial))
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "eval.benchmarks.aime24: HuggingFaceH4/aime_2024" in err, err
    assert f"cannot fetch from {partial}" in err
    assert files_under(tmp_path / "cache") == ["datasets/zwhe99/DeepMath-103K/default/train.json",
                                               "datasets/zwhe99/DeepMath-103K/default/train.parquet"]
    bad = opd(env, "fetch", TML, "--mirror", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "--mirror" in bad.stderr


def test_fetch_models_into_the_cache_and_a_run_reads_the_snapshot(hub, env, tmp_path):
    proc = opd(env, "fetch", TML, "--models", "--mirror", str(hub))
    assert proc.returncode == 0, proc.stderr
    snapshot = tmp_path / "cache/models" / MODEL_REPO
    assert f"fetched  teacher.hub_id: {MODEL_REPO} -> {snapshot}" in proc.stdout
    assert (snapshot / "config.json").is_file() and (snapshot / "model.safetensors").is_file()
    assert "student.path" in proc.stdout and "no student.hub_id: not fetched" in proc.stdout
    from opd_megatron.config import load_config
    from opd_megatron.run.fetch import cache_changes

    changes = dict((k, new) for k, _, new in cache_changes(load_config(TML)))
    assert changes["teacher.path"] == str(snapshot) and "student.path" not in changes
    assert changes["data.source"] == "parquet"


def test_reachability_asks_the_endpoint(monkeypatch):
    from opd_megatron.run.fetch import unreachable_reason

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)  # any answer: the hub is there
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert unreachable_reason() is None
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")  # closed now
    reason = unreachable_reason()
    assert reason and f"127.0.0.1:{server.server_port}" in reason and "refused" in reason.lower()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert unreachable_reason() == "HF_DATASETS_OFFLINE=1"
