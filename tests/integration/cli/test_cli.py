"""The CLI through click's runner (fast, many cases) and as a real subprocess (exit codes,
stdout that parses, the console script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from alice_spool import migrate
from alice_spool.cli import cli
from alice_spool.spec import JobSpec
from alice_spool.states import JobStatus
from alice_spool.store import Store
from tests.integration.cli.results import fails, ok
from tests.support.fake_model import write_fake_model


@pytest.fixture(autouse=True)
def installed_models(data_dir: Path) -> None:
    """(Weightless) models installed, `a` the default (the first by name): every door
    names the model a job runs on when it is queued, and refuses one not installed."""
    for name in ("a", "b", "tiny"):
        write_fake_model(data_dir / "models" / name)


def test_submit_prints_the_job_id_and_show_finds_it(run, store: Store) -> None:
    job_id = ok(run("submit", "a lighthouse at dusk")).strip()
    assert len(job_id) == 30
    shown = json.loads(ok(run("show", job_id, "--json")))
    assert shown["id"] == job_id and shown["status"] == "queued"
    assert shown["source"] == "cli" and shown["spec"]["prompt"] == "a lighthouse at dusk"
    text = ok(run("show", job_id))
    assert "a lighthouse at dusk" in text and "queued" in text


def test_submit_with_loras_and_show_lists_them(run, store: Store, data_dir: Path) -> None:
    from safetensors.numpy import save_file

    (data_dir / "models" / "loras").mkdir()
    to_k = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"
    for name in ("grain", "glow"):
        save_file(
            {to_k: np.zeros((4, 768), np.float16)},
            data_dir / "models" / "loras" / f"{name}.safetensors",
        )
    job_id = ok(run("submit", "a fox <lora:glow>", "--lora", "grain:0.5")).strip()
    job = store.jobs.get(job_id)
    assert job.spec.prompt == "a fox"
    assert job.spec.loras == (("lora/glow", 1.0), ("lora/grain", 0.5))
    text = ok(run("show", job_id))
    assert "lora/glow at 1" in text and "lora/grain at 0.5" in text
    fails(run("submit", "x", "--lora", "nope"), 3, "lora/nope is not installed", "[lora_not_found]")
    fails(run("submit", "x", "--lora", "grain:9"), 3, "between -4 and 4", "[invalid_parameters]")
    assert sum(store.jobs.counts().values()) == 1  # the refused ones queued nothing
    listed = json.loads(ok(run("models", "ls", "--json")))["loras"]
    assert [(x["id"], x["family"]) for x in listed] == [("lora/glow", "sd1"), ("lora/grain", "sd1")]


def test_submit_img2img_and_inpainting_from_files(
    run, store: Store, data_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    Image.new("RGB", (80, 64), (10, 120, 200)).save(tmp_path / "boat.png")
    Image.new("L", (80, 64), 0).save(tmp_path / "mask.png")
    job_id = ok(
        run("submit", "a boat", "--init-image", str(tmp_path / "boat.png"), "--strength", "0.4")
    ).strip()
    job = store.jobs.get(job_id)
    assert (job.spec.mode, job.spec.strength, job.spec.width, job.spec.height) == (
        "img2img", 0.4, 80, 64,
    )  # fmt: skip
    stored = data_dir / "inputs" / job_id / "init.png"
    assert stored.read_bytes() == (tmp_path / "boat.png").read_bytes()
    masked = ok(
        run("submit", "a boat", "--init-image", str(tmp_path / "boat.png"),
            "--mask", str(tmp_path / "mask.png"))
    ).strip()  # fmt: skip
    assert store.jobs.get(masked).spec.mode == "inpaint"
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"prompt": "from a file", "init_image": "boat.png"}))
    from_file = ok(run("submit", "--file", str(request))).strip()
    assert (data_dir / "inputs" / from_file / "init.png").exists()
    fails(run("submit", "x", "--mask", str(tmp_path / "mask.png")), 3, "needs an init_image")
    fails(run("submit", "x", "--init-image", str(tmp_path / "nope.png")), 3, "cannot read")
    (tmp_path / "text.png").write_text("not an image")
    fails(run("submit", "x", "--init-image", str(tmp_path / "text.png")), 3, "not a PNG")
    assert sum(store.jobs.counts().values()) == 3
    assert len(list((data_dir / "inputs").iterdir())) == 3  # nothing left by the refusals


def test_submit_takes_alices_input_image_urls_under_the_address_rules(
    run, store: Store, data_dir: Path, tmp_path: Path
) -> None:
    import io

    from PIL import Image

    from tests.support.remote import Remote, serving

    buffer = io.BytesIO()
    Image.new("RGB", (80, 64), (10, 120, 200)).save(buffer, "PNG")
    with serving(Remote(files={"/boat.png": buffer.getvalue()})) as remote:
        request = tmp_path / "request.json"
        request.write_text(
            json.dumps({"prompt": "a boat", "input_image_urls": [f"{remote.url}/boat.png"]})
        )
        fails(run("submit", "--file", str(request)), 3, "forbidden_url")
        assert remote.requests == [] and sum(store.jobs.counts().values()) == 0
        allowed = ["--set", "models.allow_private_urls=true"]
        job_id = ok(run(*allowed, "submit", "--file", str(request))).strip()
    job = store.jobs.get(job_id)
    assert (job.spec.mode, job.spec.width, job.spec.height) == ("img2img", 80, 64)
    assert (data_dir / "inputs" / job_id / "init.png").read_bytes() == buffer.getvalue()


def test_submit_with_every_option(run, store: Store) -> None:
    out = run(
        "submit", "a fox", "--negative", "blurry", "--model", "tiny", "--size", "768x512",
        "--steps", "30", "--guidance", "6", "--seed", "7", "--scheduler", "Euler a",
        "-n", "2", "--priority", "5", "--id", "fox-1", "--true-cfg", "3",
        "--max-sequence-length", "128", "--json",
    )  # fmt: skip
    job = json.loads(ok(out))
    assert job["created"] is True and job["idempotency_key"] == "fox-1"
    # (an SD model: true CFG and a T5 length are FLUX.1's and SD 3.x's, noted as ignored)
    ignored = job["spec"]["client_fields"].pop("ignored")
    assert "true_cfg_scale 3" in ignored and "max_sequence_length 128" in ignored
    assert job["spec"] == {
        "prompt": "a fox", "negative_prompt": "blurry", "model": "sd/tiny", "width": 768,
        "height": 512, "steps": 30, "guidance_scale": 6.0, "seed": 7, "scheduler": "euler_a",
        "n": 2, "priority": 5, "loras": [], "init_image": None, "mask_image": None,
        "strength": None, "hires": None, "clip_skip": None, "vae": None,
        "true_cfg_scale": None, "max_sequence_length": None, "client_fields": {},
    }  # fmt: skip


def test_submit_names_the_default_model_and_refuses_an_unknown_one(
    run, store: Store, data_dir: Path
) -> None:
    job_id = ok(run("submit", "a fox")).strip()
    assert store.jobs.get(job_id).spec.model == "sd/a"  # the default, named at enqueue
    assert "sd/a" in ok(run("ls"))
    batch = data_dir / "batch.jsonl"
    batch.write_text('{"prompt": "x"}\n{"prompt": "y", "model": "tiny"}\n')
    ok(run("submit", "--batch", str(batch)))
    assert sorted(j.spec.model for j in store.jobs.list_jobs().jobs) == ["sd/a", "sd/a", "sd/tiny"]

    fails(run("submit", "a fox", "--model", "nope"), 3, "model sd/nope is not installed")
    batch.write_text('{"prompt": "x"}\n{"prompt": "y", "model": "nope"}\n')
    fails(run("submit", "--batch", str(batch)), 3, "batch.jsonl line 2: model sd/nope")
    assert sum(store.jobs.counts().values()) == 3  # nothing of the refused ones


def test_submitting_the_same_id_twice_is_a_no_op(run, store: Store) -> None:
    first = ok(run("submit", "x", "--id", "k")).strip()
    again = run("submit", "x", "--id", "k")
    assert ok(again).strip() == first
    assert "already submitted" in again.stderr
    fails(run("submit", "y", "--id", "k"), 3, "[idempotency_conflict]")
    assert sum(store.jobs.counts().values()) == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["x", "--width", "513"], "width must be a multiple of 8"),
        (["x", "--steps", "0"], "steps must be between 1 and 150"),
        (["x", "--scheduler", "fastest"], "scheduler 'fastest' is not known"),
        (["x", "--size", "huge"], "size must look like 512x512"),
        (["x", "--size", "512x512", "--width", "512"], "not both"),
        (["x", "-n", "17"], "n must be between 1 and 16"),
        (["x", "--model", "../etc"], "not a valid model id"),
        (["   "], "prompt must not be empty"),
    ],
)
def test_bad_values_are_one_clear_line(run, store: Store, args: list[str], fragment: str) -> None:
    stderr = fails(run("submit", *args), 3, fragment, "[invalid_parameters]")
    assert len(stderr.strip().splitlines()) == 1
    assert sum(store.jobs.counts().values()) == 0


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["x", "--file", "r.json"],
        ["--file", "r.json", "--steps", "5"],
        ["--batch", "b.jsonl", "--id", "k"],
        ["x", "--steps", "many"],
    ],
)
def test_usage_errors_exit_2(run, args: list[str]) -> None:
    assert run("submit", *args).exit_code == 2


def test_submit_a_request_file_and_stdin(run, store: Store, tmp_path: Path) -> None:
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"prompt": "from a file", "steps": 9, "id": "file-1"}))
    job_id = ok(run("submit", "--file", str(request))).strip()
    job = store.jobs.get(job_id)
    assert (job.spec.steps, job.client, job.idempotency_key) == (9, "r.json", "file-1")
    piped = ok(run("submit", "--file", "-", input='{"prompt": "piped"}')).strip()
    assert store.jobs.get(piped).spec.prompt == "piped"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "must be a JSON object"),
        ('{"prompt": "x", "stpes": 3}', "did you mean 'steps'"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_request_files(run, store: Store, tmp_path: Path, content, fragment: str) -> None:
    request = tmp_path / "r.json"
    request.write_bytes(content if isinstance(content, bytes) else content.encode())
    fails(run("submit", "--file", str(request)), 3, fragment)
    fails(run("submit", "--file", str(tmp_path / "missing.json")), 3, "does not exist")
    assert sum(store.jobs.counts().values()) == 0


def test_submit_a_batch(run, store: Store, tmp_path: Path) -> None:
    lines = [json.dumps({"prompt": f"p{i}", "id": f"b-{i}"}) for i in range(5)]
    batch_file = tmp_path / "nightly.jsonl"
    batch_file.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    result = run("submit", "--batch", str(batch_file))
    batch_id = ok(result).strip()
    assert "queued 5 job(s)" in result.stderr
    counts = store.jobs.batch_counts(batch_id)
    assert counts[JobStatus.QUEUED] == 5
    again = run("submit", "--batch", str(batch_file), "--json")
    assert json.loads(ok(again))["batch_id"] == batch_id  # the same batch: a no-op
    assert sum(store.jobs.counts().values()) == 5


def test_a_bad_line_rejects_the_whole_batch(run, store: Store, tmp_path: Path) -> None:
    batch_file = tmp_path / "b.jsonl"
    batch_file.write_text('{"prompt": "fine"}\n{"prompt": "bad", "steps": 999}\n')
    fails(run("submit", "--batch", str(batch_file)), 3, "b.jsonl line 2", "steps")
    batch_file.write_text('{"prompt": "fine"}\n{oops\n')
    fails(run("submit", "--batch", str(batch_file)), 3, "line 2", "invalid JSON")
    batch_file.write_text("\n\n")
    fails(run("submit", "--batch", str(batch_file)), 3, "holds no requests")
    assert sum(store.jobs.counts().values()) == 0


def test_ls_filters_and_json(run, store: Store) -> None:
    ids = [ok(run("submit", f"p{i}", "--model", "a" if i % 2 else "b")).strip() for i in range(4)]
    table = ok(run("ls"))
    assert table.splitlines()[0].split()[:3] == ["ID", "STATUS", "PRI"]
    assert [line.split()[0] for line in table.splitlines()[1:]] == ids[::-1]
    listed = json.loads(ok(run("ls", "--model", "a", "--json")))
    assert [j["id"] for j in listed["jobs"]] == [ids[3], ids[1]]
    ok(run("cancel", ids[0]))
    cancelled = json.loads(ok(run("ls", "--status", "cancelled", "--json")))["jobs"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    page = json.loads(ok(run("ls", "--limit", "2", "--json")))
    assert page["next_cursor"] == ids[2]
    rest = json.loads(ok(run("ls", "--before", page["next_cursor"], "--json")))["jobs"]
    assert [j["id"] for j in rest] == [ids[1], ids[0]]
    assert len(json.loads(ok(run("ls", "--since", "1h", "--json")))["jobs"]) == 4
    assert json.loads(ok(run("ls", "--since", "2999-01-01", "--json")))["jobs"] == []
    fails(run("ls", "--since", "last tuesday"), 3, "neither a duration")
    assert "no jobs" in run("ls", "--source", "api").stderr


def test_cancel_retry_priority(run, store: Store) -> None:
    job_id = ok(run("submit", "x")).strip()
    assert "priority 9" in ok(run("priority", job_id, "9"))
    fails(run("priority", job_id, "101"), 3, "between -100 and 100")
    assert "cancelled" in ok(run("cancel", job_id))
    fails(run("priority", job_id, "1"), 3, "[invalid_state]")
    assert "queued again" in ok(run("retry", job_id))
    (claimed,) = store.leases.claim_batch("r", 1, lease_s=60)
    assert "stopping at the next step" in ok(run("cancel", job_id))
    store.leases.finish_cancelled(claimed.id, "r")
    ok(run("retry", job_id))
    (claimed,) = store.leases.claim_batch("r", 1, lease_s=60)
    store.leases.succeed(claimed.id, "r", {})
    fails(run("cancel", job_id), 3, "already succeeded", "[invalid_state]")
    fails(run("retry", job_id), 3, "only failed or cancelled")
    fails(run("show", "nope"), 3, "no job nope", "[not_found]")
    assert run("cancel").exit_code == 2
    assert run("retry", job_id, "--failed").exit_code == 2


def test_cancel_and_retry_in_bulk(run, store: Store, tmp_path: Path) -> None:
    batch_file = tmp_path / "b.jsonl"
    batch_file.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(3)))
    batch_id = ok(run("submit", "--batch", str(batch_file))).strip()
    report = json.loads(ok(run("cancel", "--batch", batch_id, "--json")))
    assert report["cancelled"] == 3
    fails(run("cancel", "--batch", "nope"), 3, "no batch nope")
    other = ok(run("submit", "other")).strip()
    (claimed,) = store.leases.claim_batch("r", 1, lease_s=60)
    store.leases.fail(claimed.id, "r", "generation_failed", "boom")
    assert json.loads(ok(run("retry", "--failed", "--json")))["retried"] == [other]


def test_wait_exit_codes(run, store: Store) -> None:
    good, bad = ok(run("submit", "good")).strip(), ok(run("submit", "bad")).strip()
    fails(run("wait", good, "--timeout", "0.2"), 4, "still unfinished", "[timeout]")
    first, second = store.leases.claim_batch("r", 2, lease_s=60)
    store.leases.succeed(first.id, "r", {})
    store.leases.fail(second.id, "r", "generation_failed", "all black")
    assert json.loads(ok(run("wait", good, "--json")))["ok"] is True
    result = run("wait", good, bad)
    assert result.exit_code == 1 and "generation_failed" in result.stderr
    fails(run("wait", "--batch", "nope"), 3, "no batch")
    assert run("wait").exit_code == 2


def test_submit_wait_times_out_without_a_runner(run, store: Store) -> None:
    fails(run("submit", "x", "--wait", "--timeout", "0.2"), 4, "[timeout]")


def test_stats_and_purge(run, store: Store) -> None:
    ok(run("submit", "x"))
    (job,) = store.leases.claim_batch("r", 1, lease_s=60)
    store.leases.succeed(job.id, "r", {})
    stats = json.loads(ok(run("stats", "--window", "10m", "--json")))
    assert stats["depth"]["succeeded"] == 1 and stats["finished_in_window"]["succeeded"] == 1
    assert "throughput" in ok(run("stats"))
    fails(run("stats", "--window", "soon"), 3, "not a duration")
    assert json.loads(ok(run("purge", "--older-than", "1h", "--json")))["jobs"] == []
    assert "would delete 1" in ok(run("purge", "--before", "2999-01-01", "--dry-run"))
    assert "deleted 1" in ok(run("purge", "--older-than", "0s"))
    assert sum(store.jobs.counts().values()) == 0
    assert run("purge").exit_code == 2


def test_db_commands(run, data_dir: Path) -> None:
    head = migrate.head_revision()  # the newest revision on disk (0012: client options)
    assert head == "0015"
    assert f"empty -> {head}" in ok(run("db", "upgrade"))
    assert f"already at revision {head}" in ok(run("db", "upgrade"))
    assert json.loads(ok(run("db", "current", "--json")))["up_to_date"] is True
    check = json.loads(ok(run("db", "check", "--json")))
    assert check["checks"] == {"revision": True, "schema": True, "integrity": True}
    import sqlite3

    connection = sqlite3.connect(data_dir / "alice.db")
    connection.execute("DROP INDEX ix_jobs_batch_id")
    connection.commit()
    connection.close()
    result = run("db", "check")
    assert result.exit_code == 1 and "schema     FAIL" in result.stdout


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("nonsense://", "cannot use the database URL"),
        ("postgresql+nosuchdriver://u@h/db", "cannot use the database URL"),
        ("sqlite://", "in-memory SQLite"),
        ("not a url at all", "invalid database URL"),
    ],
)
def test_bad_database_urls_are_one_clear_line(run, url: str, fragment: str) -> None:
    stderr = fails(run("--database-url", url, "ls"), 3, fragment, "[database_error]")
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:hunter2-pw@h:notaport/db",
        "postgresql+nosuchdriver://u:hunter2-pw@h/db?password=hunter2-pw",
        "postgresql+nosuchdriver://u@h/db?password=hunter2-pw&sslmode=require",
    ],
)
def test_a_bad_database_url_never_repeats_its_password(run, url: str) -> None:
    result = run("--database-url", url, "db", "current", "--json")
    assert result.exit_code == 3 and "database URL" in result.stderr
    assert "hunter2-pw" not in result.stdout + result.stderr


def test_a_file_that_is_not_a_database(run, tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_text("hello")
    fails(run("--database-url", f"sqlite:///{tmp_path / 'junk.db'}", "ls"), 3, "not a database")


def test_config_errors_and_display(run, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[server]\nprot = 1\n")
    fails(run("--config", str(tmp_path / "bad.toml"), "ls"), 3, "server.prot", "[config_invalid]")
    fails(run("--set", "runner.max_batch=lots", "ls"), 3, "runner.max_batch")
    assert run("--set", "oops", "ls").exit_code == 2
    (tmp_path / "keys.toml").write_text("[server.api_keys]\nsam = 'hunter2'\n")
    shown = ok(run("--config", str(tmp_path / "keys.toml"), "config", "--json"))
    assert "hunter2" not in shown and json.loads(shown)["server"]["api_keys"] == {"sam": "***"}


def test_every_command_has_help() -> None:
    runner = CliRunner()
    names = ["submit", "ls", "show", "cancel", "retry", "priority", "wait", "stats", "purge"]
    names += ["config", "db upgrade", "db current", "db check"]
    for name in names:
        result = runner.invoke(cli, [*name.split(), "--help"])
        assert result.exit_code == 0 and "Usage: " in result.stdout
        assert len(result.stdout.splitlines()) > 4
    assert "--json" in runner.invoke(cli, ["ls", "--help"]).stdout


# -- as a real process --------------------------------------------------------------------


def spool(data_dir: Path, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
    return subprocess.run(
        [sys.executable, "-m", "alice_spool", "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=data_dir.parent, **kw,
    )  # fmt: skip


def test_subprocess_exit_codes_and_json(data_dir: Path) -> None:
    submitted = spool(data_dir, "submit", "a real process", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    listed = json.loads(spool(data_dir, "ls", "--json").stdout)
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    bad = spool(data_dir, "submit", "x", "--steps", "0")
    assert bad.returncode == 3 and bad.stderr.startswith("Error: steps must be between")
    assert spool(data_dir, "submit").returncode == 2
    assert spool(data_dir, "show", "nope").returncode == 3


def test_wait_returns_as_soon_as_the_job_finishes(data_dir: Path) -> None:
    job_id = spool(data_dir, "submit", "x").stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
    waiter = subprocess.Popen(
        [sys.executable, "-m", "alice_spool", "--data-dir", str(data_dir), "wait", job_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    time.sleep(1.0)
    assert waiter.poll() is None  # still waiting
    store = Store.open(f"sqlite:///{data_dir / 'alice.db'}")
    (job,) = store.leases.claim_batch("r", 1, lease_s=60)
    store.leases.succeed(job.id, "r", {})
    stdout, stderr = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, stderr
    assert job_id in stdout and "succeeded" in stdout


def test_the_console_script(data_dir: Path) -> None:
    script = shutil.which("alice-spool", path=str(Path(sys.executable).parent))
    assert script, "the alice-spool console script is not installed"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("alice-spool, version ")


def test_watch_once_and_ls_by_source_file(run, store: Store, data_dir: Path) -> None:
    inbox = data_dir / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "night.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    (inbox / "one.json").write_text('{"prompt": "c"}')
    (inbox / "bad.json").write_text('{"prompt": "d", "steps": "many"}')
    summary = json.loads(ok(run("watch", "--once", "--json")))
    assert (summary["accepted"], summary["rejected"], summary["duplicates"]) == (2, 1, 0)
    listed = json.loads(ok(run("ls", "--source-file", "night.jsonl", "--json")))["jobs"]
    assert sorted(j["spec"]["prompt"] for j in listed) == ["a", "b"]
    by_path = json.loads(ok(run("ls", "--source-file", str(inbox / "one.json"), "--json")))
    assert [j["source"] for j in by_path["jobs"]] == ["inbox"]
    assert json.loads(ok(run("ls", "--source-file", "bad.json", "--json")))["jobs"] == []
    result = run("ls", "--source-file", "x.json", "--client", "y")
    assert result.exit_code == 2 and "--source-file" in result.output
    assert "0 file(s) taken" in ok(run("watch", "--once"))  # nothing left to take
    assert (inbox / "rejected" / "bad.json.error.json").exists()


def test_db_backup_while_writing_and_checkpoint(run, store: Store, tmp_path: Path) -> None:
    import threading

    from alice_spool.database import Database

    stop = threading.Event()

    def keep_writing() -> None:
        i = 0
        while not stop.is_set():
            store.jobs.enqueue(JobSpec(prompt=f"during {i}"), source="cli")
            i += 1

    for i in range(50):
        store.jobs.enqueue(JobSpec(prompt=f"before {i}"), source="cli")
    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        copy = tmp_path / "backups" / "copy.db"
        copy.parent.mkdir()
        summary = json.loads(ok(run("db", "backup", str(copy), "--json")))
    finally:
        stop.set()
        writer.join()
    assert summary["bytes"] == copy.stat().st_size > 0
    assert [p.name for p in copy.parent.iterdir()] == ["copy.db"]  # one file, no temporary
    restored = Store(Database.open(f"sqlite:///{copy}"))
    assert restored.db.integrity_check() == ["ok"]
    assert 50 <= sum(restored.jobs.counts().values()) <= sum(store.jobs.counts().values())
    fails(run("db", "backup", str(copy)), 3, "exists already")
    assert "checkpointed" in ok(run("db", "checkpoint"))


def test_purge_images_applies_the_retention_settings(run, store: Store, data_dir: Path) -> None:
    job = store.jobs.enqueue(JobSpec(prompt="old"), source="cli").job
    (claimed,) = store.leases.claim_batch("r", 1, lease_s=60)
    assert claimed.id == job.id
    directory = data_dir / "outbox" / job.id
    directory.mkdir(parents=True)
    (directory / f"{job.id}-0.png").write_bytes(b"x" * 100)
    store.leases.succeed(job.id, "r", {"images": [{"file": f"{job.id}-0.png"}]})
    report = json.loads(
        ok(
            run(
                "--set",
                "retention.days=0",
                "--set",
                "retention.max_storage_gb=0.00000005",
                "purge",
                "--images",
                "--json",
            )
        )
    )
    assert report["deleted_by_size"] == [job.id] and not directory.exists()
    assert store.jobs.get(job.id).images_expired_at is not None
    assert "deleted the images of 0 job(s)" in ok(run("purge", "--images"))
    assert run("purge", "--images", "--older-than", "1d").exit_code == 2
