"""The command line: start-up problems as one clear line, starting not ready, `--workers 2`,
`inspect` on every format, and `demo` handing its options to the demo runner."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverkit import OBS_DIM, ServerProcess, seeded, state, torch_script, wait_for

from ckptserve import publish
from ckptserve.cli import default_name, main, parse_models

pytestmark = pytest.mark.slow


def run_main(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--swap", "fast"], "--swap"),
        (["--obs-dim", "0"], "--obs-dim"),
        (["--allow-formats", "pickle"], "unknown format"),
        (["--obs-low", "low"], "--obs-low"),
        (["--prefix", "/v2"], "--prefix"),
        (["--require-signature"], "signature"),
        (["--factory", "nowhere_module:make"], "--factory"),
        (["--workers", "0"], "--workers"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_bad_options_are_one_line(
    model_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    """A bad option exits non-zero with one `ckptserve: error:` line and no traceback."""
    code = run_main(["serve", str(model_dir / "actor_latest.pt"), *args])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("ckptserve: error:") and says in err, err


@pytest.mark.parametrize(
    ("factory", "says"),
    [
        ("serverkit.make_tiny_actor", "'serverkit.make_tiny_actor' must look like"),
        (":make_tiny_actor", "':make_tiny_actor' must look like"),
        ("nowhere_module:make", "'nowhere_module:make': No module named 'nowhere_module'"),
        ("serverkit:no_such_factory", "'serverkit:no_such_factory': module 'serverkit' has no"),
        ("serverkit:OBS_DIM", "'serverkit:OBS_DIM' is not callable"),
    ],
)
def test_bad_factory_is_one_line_naming_the_option(
    model_dir: Path, capsys: pytest.CaptureFixture[str], factory: str, says: str
) -> None:
    """--factory is resolved before serving, as the loader would; a bad one is one line."""
    assert run_main(["serve", str(model_dir), "--factory", factory]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ckptserve: error: --factory {says}"), err


def test_path_under_a_file_is_a_startup_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_main(["serve", str(blocker / "actor_latest.pt")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_no_model_is_a_startup_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["serve"]) == 1
    assert "no model" in capsys.readouterr().err


def test_port_in_use_is_one_line_without_traceback(model_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ckptserve", "serve", str(model_dir), "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == f"ckptserve: error: cannot listen on 127.0.0.1:{port}: address already in use"
        " (pick another with --port)"
    )


def test_model_names_from_arguments(tmp_path: Path) -> None:
    assert default_name(Path("models/actor_latest.pt")) == "actor"
    assert default_name(Path("critic_20260412_143022.pt")) == "critic"
    assert default_name(Path("policy_v2_20260412_143022_1.pt")) == "policy_v2"
    assert default_name(tmp_path / "models-to-come") == "actor"
    specs = parse_models(["a/actor_latest.pt", "risk=b/r.pt"])
    assert [s["name"] for s in specs] == ["actor", "risk"]
    assert specs[1]["path"] == "b/r.pt"


def test_missing_checkpoint_starts_not_ready(tmp_path: Path) -> None:
    """No checkpoint yet: live but not ready (503 + reason, Retry-After); ready after publish."""
    directory = tmp_path / "models"
    directory.mkdir()
    args = [str(directory), "--obs-dim", str(OBS_DIM), "--log-format", "json"]
    with ServerProcess(args, log=tmp_path / "log") as server:
        server.wait_ready(path="/healthz")
        ready = server.client.get("/readyz")
        assert ready.status_code == 503 and "no checkpoint" in ready.json()["detail"]
        r = server.client.post("/rl/predict", json=state())
        assert r.status_code == 503 and r.headers["retry-after"]
        assert server.client.get("/rl/status").json()["loaded"] is False
        publish(torch_script(seeded(3)), directory)
        server.wait_ready(timeout=20)
        assert server.client.post("/rl/predict", json=state()).status_code == 200
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
        loads = [line for line in lines if line.get("result") == "ok"]
        assert len(loads) == 1, lines
        assert {"model", "checkpoint", "sha256", "duration", "reason"} <= set(loads[0])


def _wait_for_both_workers(
    server: ServerProcess, sha: str, *, every_answer: bool
) -> dict[int, str]:
    """Poll until two worker pids have answered predict with `sha`; with `every_answer`, every
    answer on the way must be a 200 from that checkpoint (else: not ready yet is retried)."""
    seen: dict[int, str] = {}

    def both() -> bool:
        # A fresh connection each time, so the kernel may hand it to either worker.
        with httpx.Client(base_url=server.url, timeout=10) as c:
            r = c.post("/rl/predict", json=state())
            good = r.status_code == 200 and r.json()["sha256"] == sha
            assert good or not every_answer, (r.status_code, r.text, sha)
            if not good:
                return False
            status = c.get("/rl/status").json()
            seen[status["pid"]] = status["version"]["sha256"]
        return len(seen) == 2

    wait_for(both, 60, "both workers to answer")
    return seen


def test_two_workers_both_serve_a_new_publish(tmp_path: Path) -> None:
    """--workers 2: after a publish, every worker answers with the new sha256; metrics sum."""
    directory = tmp_path / "models"
    publish(torch_script(seeded(0)), directory)
    with ServerProcess([str(directory), "--workers", "2"], log=tmp_path / "log") as server:
        server.wait_ready()
        # Both workers live first: a publish while one still loads its first model would be a
        # torn load for that worker, which then answers 503 until its retry.
        first = json.loads((directory / "actor_latest.json").read_text())["sha256"]
        _wait_for_both_workers(server, first, every_answer=False)
        publish(torch_script(seeded(5)), directory)
        sha = json.loads((directory / "actor_latest.json").read_text())["sha256"]
        seen = _wait_for_both_workers(server, sha, every_answer=True)
        assert set(seen.values()) == {sha}
        text = server.client.get("/metrics").text
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('ckptserve_requests_total{code="200",model="actor"}')
        )
        assert total >= 2
        info = [
            ln
            for ln in text.splitlines()
            if ln.startswith("ckptserve_model_info{") and ln.endswith(" 1.0")
        ]
        assert len(info) == 1 and sha in info[0], info


FORMATS = ["export", "torchscript", "state_dict", "safetensors"]


def _no_whole_file_reads(self: Path) -> bytes:
    raise AssertionError(f"{self} was read into one bytes object")


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_each_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """inspect reports every field for each format, without reading the file into one object."""
    path = publish(seeded(1), tmp_path, format=fmt)  # type: ignore[arg-type]
    monkeypatch.setattr(Path, "read_bytes", _no_whole_file_reads)
    args = ["inspect", str(path), "--json"]
    if fmt in ("state_dict", "safetensors"):
        args += ["--factory", "serverkit:make_tiny_actor"]
    assert run_main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == fmt
    assert info["probe"] == "ok" and info["input_shape"] == [1, OBS_DIM]
    assert info["output_shape"] == [1, 1]
    assert info["parameters"] == sum(p.numel() for p in seeded(1).parameters())
    assert len(info["sha256"]) == 64 and info["load_ms"] > 0
    assert info["metadata"]["obs_dim"] == OBS_DIM


def test_inspect_weights_without_factory_and_garbage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = publish(seeded(1), tmp_path, format="safetensors")
    assert run_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "safetensors" in out and "--factory" in out
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert run_main(["inspect", str(garbage)]) == 1
    assert "unknown checkpoint format" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["state_dict", "safetensors"])
def test_inspect_weights_without_factory_reads_parameters_and_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """Without --factory a weights file still shows its parameter count and metadata."""
    path = publish(seeded(1), tmp_path, format=fmt)  # type: ignore[arg-type]
    monkeypatch.setattr(Path, "read_bytes", _no_whole_file_reads)
    assert run_main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == fmt and "--factory" in info["probe"]
    assert info["parameters"] == sum(p.numel() for p in seeded(1).parameters())
    assert info["metadata"]["obs_dim"] == OBS_DIM


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_a_corrupt_file_says_it_would_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """A flipped bit in the weights is a failed load (exit 1), with or without --factory."""
    path = publish(seeded(1), tmp_path, format=fmt)  # type: ignore[arg-type]
    data = bytearray(path.read_bytes())
    if fmt == "safetensors":
        data[-3] ^= 0x01
    else:  # in the middle of the first tensor's zip record, so the directory still reads
        with zipfile.ZipFile(path) as zf:
            record = next(i for i in zf.infolist() if i.filename.endswith("0"))
        name_len, extra_len = struct.unpack_from("<HH", data, record.header_offset + 26)
        data[record.header_offset + 30 + name_len + extra_len + record.compress_size // 2] ^= 0x01
    torn = tmp_path / f"torn{path.suffix}"
    torn.write_bytes(bytes(data))
    assert run_main(["inspect", str(torn), "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == fmt and info["error"].startswith("load failed:"), info


def test_python_dash_m_inspect(tmp_path: Path) -> None:
    path = publish(torch_script(seeded(1)), tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ckptserve", "inspect", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "torchscript" in result.stdout and "probe" in result.stdout


def test_demo_calls_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    fake = types.ModuleType("ckptserve.demo.runner")
    fake.run_demo = lambda **kw: calls.append(kw) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ckptserve.demo.runner", fake)
    code = run_main(["demo", "--port", "8123", "--directory", "/tmp/d", "--duration", "2"])
    assert code == 0
    assert calls == [{"host": "127.0.0.1", "port": 8123, "directory": "/tmp/d", "duration": 2.0,
                      "broken_step": None}]  # fmt: skip
    run_main(["demo", "--broken-step", "3000"])
    assert calls[-1]["broken_step"] == 3000


def test_options_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> None:
    """Every serve option can be a CKPTSERVE_ variable; a flag on the command line wins."""
    from ckptserve.cli import build_settings

    monkeypatch.setenv("CKPTSERVE_SWAP", "background")
    monkeypatch.setenv("CKPTSERVE_PORT", "8123")
    monkeypatch.setenv("CKPTSERVE_ALLOW_FORMATS", '["export"]')
    monkeypatch.setenv("CKPTSERVE_ADMIN_TOKEN", "t")
    settings = build_settings([str(model_dir)], {"port": 9000, "swap": None})
    assert settings.registry.swap == "background" and settings.port == 9000
    assert settings.registry.allow_formats == ("export",)
    assert settings.admin_token.get_secret_value() == "t"
    assert "admin_token" not in settings.to_env()  # workers read it from the environment
    options = settings.registry_options()
    assert options.swap == "background" and options.allow_formats == ("export",)


def test_background_nice_reaches_the_registry_and_is_bounded(model_dir: Path) -> None:
    """--background-nice N becomes the registry's background_nice; outside 0..19 is refused."""
    from ckptserve.cli import StartupError, build_settings

    settings = build_settings([str(model_dir)], {"background_nice": 3})
    assert settings.registry_options().background_nice == 3
    with pytest.raises(StartupError, match="background"):
        build_settings([str(model_dir)], {"background_nice": 20})


def test_no_arguments_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main([]) == 2
    assert "serve" in capsys.readouterr().out


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.parametrize(
    ("device", "says"),
    [
        ("gpu", "--device 'gpu' is not a device torch knows"),
        pytest.param(
            "cuda:0", "--device cuda:0: ",
            marks=pytest.mark.skipif(_cuda_devices() > 0, reason="this machine has CUDA"),
        ),
        ("cuda:64", "--device cuda:64: "),
    ],
)  # fmt: skip
def test_an_unusable_device_is_refused_at_start(
    model_dir: Path, capsys: pytest.CaptureFixture[str], device: str, says: str
) -> None:
    """A device torch cannot parse, or one this machine lacks, is one line before serving."""
    assert run_main(["serve", str(model_dir), "--device", device]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ckptserve: error: {says}"), err


def test_a_usable_device_passes_the_check() -> None:
    from ckptserve.server.devices import device_problem

    assert device_problem("cpu") is None
    assert device_problem("cpu:0") is None
    if _cuda_devices():
        assert device_problem("cuda") is None
        assert device_problem(f"cuda:{_cuda_devices() - 1}") is None


def test_a_typo_in_the_path_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve runs/exp1/modles` with neither runs/ nor exp1/ there is one line; nothing is made."""
    runs = tmp_path / "runs" / "exp1"
    for typo in (runs / "modles", runs / "actor_latest.pt"):
        code = run_main(["serve", str(typo)])
        err = capsys.readouterr().err
        assert code == 1 and "does not exist" in err and "a typo?" in err, err
        assert err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_last_directory_is_created_and_the_wait_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the last component of a model directory is created, and the log says the server
    waits for a first checkpoint there; a deeper missing path raises and creates nothing."""
    from ckptserve.server.paths import prepare_model_path

    caplog.set_level("INFO", logger="ckptserve.server")
    prepare_model_path(str(tmp_path / "models"))
    assert (tmp_path / "models").is_dir()
    assert f"created {tmp_path / 'models'}: waiting for a first checkpoint there" in caplog.text
    caplog.clear()
    prepare_model_path(str(tmp_path / "models"))
    assert "nothing published in" in caplog.text and "waiting for a first checkpoint" in caplog.text
    with pytest.raises(FileNotFoundError, match="a typo"):
        prepare_model_path(str(tmp_path / "a" / "b" / "models"))
    assert not (tmp_path / "a").exists()


FACTORY_MODULE = "from serverkit import TinyActor\n\n\ndef make():\n    return TinyActor()\n"


def test_a_factory_imports_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> None:
    """`--factory mypolicy:make` finds ./mypolicy.py without PYTHONPATH=. (--app-dir ".")."""
    (tmp_path / "cwd_policy.py").write_text(FACTORY_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_policy", raising=False)
    from ckptserve.cli import _preflight, build_settings

    settings = build_settings([str(model_dir)], {"factory": "cwd_policy:make"})
    _preflight(settings)
    assert sys.path[0] == str(tmp_path) and "cwd_policy" in sys.modules


def test_workers_import_the_factory_from_the_app_dir(tmp_path: Path) -> None:
    """With --workers 2 and --app-dir, every worker loads weights through a factory module that
    is on no other import path."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app_policy.py").write_text(FACTORY_MODULE)
    directory = tmp_path / "models"
    publish(seeded(2), directory, format="state_dict")
    args = [str(directory), "--factory", "app_policy:make", "--app-dir", str(app_dir),
            "--workers", "2"]  # fmt: skip
    with ServerProcess(args, log=tmp_path / "log", env={"PYTHONSAFEPATH": "1"}) as server:
        server.wait_ready(timeout=90)
        pids: set[int] = set()

        def both_loaded() -> bool:
            with httpx.Client(base_url=server.url, timeout=10) as c:  # either worker may answer
                assert c.post("/rl/predict", json=state()).status_code == 200, server.output()
                pids.add(c.get("/rl/status").json()["pid"])
            return len(pids) == 2

        wait_for(both_loaded, 90, "both workers to answer")
