"""Cluster execution: profile resolution, GPU launch commands and resources, the GPU-count check, a real
single-node SLURM running a cut-down demo through sbatch, preemption with exact resume, and recovery of a killed
Snakemake.

The SLURM tests start tools/local_slurm/start.sh (root and apt needed; about 30 s the first time) or use the
cluster already up, and skip with the reason when they cannot; CI (.ci/run) sets ORL_REQUIRE_SLURM=1 so that
they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import slurm_helpers as sh
from workflow_helpers import REPO, demo_config

# --------------------------------------------------------------------------------------------- configurations
TINY_BYOL = {"method_args": {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 64}}
# The cluster run: a sharded stage (2 proposal shards + gather) and a training stage, 6 jobs in all.
CLUSTER_DEMO = demo_config(
    {
        "demo": {"num_train": 16, "num_val": 8, "image_size": 96},
        "index": {"threads": 1},
        "pretrain": {"epochs": 1, "batch_size": 8, "image_size": 32, "workers": 0, "threads": 1, "mem_mb": 1000,
                     "runtime": 10, "methods": {"byol": TINY_BYOL}},
        "proposals": {"shards": 2, "threads": 1, "mem_mb": 500, "runtime": 10},
    }
)
CLUSTER_TARGETS = ["results/mining/proposals.h5", "results/pretrain/byol/model.pt"]
# bench_crops: the pretraining rules read the labelled demo crops of the online kNN monitor.
CLUSTER_RULES = {"demo_data": 1, "index_images": 1, "bench_crops": 1, "proposals": 2, "gather_proposals": 1,
                 "pretrain_byol": 1}
# Long enough to be stopped mid-run: 16 images / batch 4 = 4 steps per epoch, 16 steps, a checkpoint per epoch;
# one DataLoader worker, which must ignore the SIGTERM sent to the whole job.
PREEMPT = demo_config(
    {**CLUSTER_DEMO, "pretrain": {**CLUSTER_DEMO["pretrain"], "epochs": 4, "batch_size": 4, "workers": 1,
                                  "checkpoint_every": 1}}
)
MODEL = "results/pretrain/byol/model.pt"


def skip_or_fail(reason: str) -> None:
    """Skip, or fail where CI requires the cluster."""
    if os.environ.get(sh.REQUIRE_ENV):
        pytest.fail(f"{reason} (and ${sh.REQUIRE_ENV} is set)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def local_slurm():
    """A single-node SLURM: the one already up, or one started here and stopped after the module's tests."""
    if os.geteuid() != 0:
        skip_or_fail("starting the local SLURM (tools/local_slurm/start.sh) needs root")
    if shutil.which("timeout") is None:
        skip_or_fail("coreutils `timeout` is missing")
    was_up = shutil.which("sbatch") is not None and sh.slurm_is_up()
    ok, output = sh.start_local_slurm()
    if not ok:
        skip_or_fail(f"tools/local_slurm/start.sh failed: {output[-1500:]}")
    yield
    if not was_up:  # leave no daemons behind that a second run would trip over
        sh.stop_local_slurm()


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command with the test environment; returns the finished process."""
    return subprocess.run(cmd, env=sh.env(), capture_output=True, text=True, **kw)


def dry_run(workdir: Path, config: dict, *targets: str, cwd: Path | None = None, extra: tuple = (),
            env: dict | None = None) -> subprocess.CompletedProcess:
    """snakemake -n -p in workdir (profile names resolve against cwd, as for a user)."""
    cmd = sh.snakemake_cmd(workdir, config, "-n", "-p", "--cores", "8", *extra, *targets, limit=120)
    return subprocess.run(cmd, env=env or sh.env(), capture_output=True, text=True, cwd=cwd or workdir)


def parse_jobs(out: str) -> dict[str, dict]:
    """rule name -> {"resources": {...}, "shell": str} of a dry run's printed jobs (the last job of each rule)."""
    jobs: dict[str, dict] = {}
    current = None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            current = jobs.setdefault(m.group(1), {"resources": {}, "shell": ""})
        elif current is not None and line.strip().startswith("resources:"):
            pairs = re.findall(r"(\w+)=([^,]+)", line.split("resources:", 1)[1])
            current["resources"] = {k: int(v) if v.strip().isdigit() else v.strip() for k, v in pairs}
        elif current is not None and line.startswith("Shell command:"):
            current["shell"] = line.split("Shell command:", 1)[1].strip()
    return jobs


class _Resources(dict):
    __getattr__ = dict.get


def sbatch_line(resources: dict, threads: int) -> str:
    """The sbatch call snakemake-executor-plugin-slurm builds for a job with these resources (partition part)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    res = {k: v for k, v in resources.items() if k in {"gpu", "gres", "nodes", "tasks", "tasks_per_gpu", "mpi",
                                                     "cpus_per_task", "cpus_per_gpu", "mem_mb", "runtime"}}
    job = SimpleNamespace(resources=_Resources(res), threads=threads)
    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "x", "account": "", "partition": " -p part",
              "workdir": "/w"}
    settings = SimpleNamespace(requeue=False, no_requeue=False, qos=None, reservation=None)
    return get_submit_command(job, params, settings=settings) + set_gres_string(job)


# ------------------------------------------------------------------------------------------ profile resolution
def test_bare_profile_name_resolves_to_profiles_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`snakemake --profile slurm` from the repo root finds ./slurm -> profiles/slurm; env vars set partition/account."""
    link = REPO / "slurm"
    assert link.is_symlink() and os.readlink(link) == "profiles/slurm"
    from snakemake.cli import get_profile_dir

    with monkeypatch.context() as m:
        m.chdir(REPO)  # a bare name is looked up in the current directory first, then in the user's config dirs
        assert get_profile_dir("slurm")[1].resolve() == (REPO / "profiles" / "slurm" / "config.yaml").resolve()
    env = {k: v for k, v in sh.env().items() if not k.startswith("ORL_SLURM_")}
    proc = dry_run(tmp_path / "a", CLUSTER_DEMO, MODEL, cwd=REPO, extra=("--profile", "slurm"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Using profile slurm" in proc.stdout + proc.stderr
    res = parse_jobs(proc.stdout)["index_images"]["resources"]
    assert res["slurm_partition"] == "gpu" and "slurm_account" not in res and res["mem_mb"] == 16000
    env.update(ORL_SLURM_PARTITION="a100", ORL_SLURM_ACCOUNT="proj42")
    proc = dry_run(tmp_path / "b", CLUSTER_DEMO, MODEL, cwd=REPO, extra=("--profile", "profiles/slurm"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = parse_jobs(proc.stdout)["pretrain_byol"]["resources"]
    assert res["slurm_partition"] == "a100" and res["slurm_account"] == "proj42"


# ------------------------------------------------------------------------------------- GPU launch commands
LAUNCH_CASES = {
    "gpus8-nodes1": {"gpus": 8, "threads": 80},
    "gpus4-nodes2": {"gpus": 4, "nodes": 2, "threads": 32},
    "gpus0": {"gpus": 0, "threads": 2},
}


@pytest.mark.parametrize("case", LAUNCH_CASES)
def test_training_launch_commands_and_sbatch(case: str, tmp_path: Path) -> None:
    """The printed shell and resources of stage 1 / stage 3 (and detection), and the sbatch line they become."""
    pre = LAUNCH_CASES[case]
    config = demo_config({"pretrain": pre, "bench": {"detection": {"gpus": pre["gpus"]}}})
    proc = dry_run(tmp_path, config, "results/pretrain/orl/model.pt", "results/bench/byol/detection.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = parse_jobs(proc.stdout)
    gpus, threads = pre["gpus"], pre["threads"]
    for rule in ("pretrain_byol", "pretrain_orl"):
        shell, res = jobs[rule]["shell"], jobs[rule]["resources"]
        sbatch = sbatch_line(res, threads)
        method = rule.split("_", 1)[1]
        if case == "gpus8-nodes1":
            assert shell.startswith(f"ORL_EXPECT_GPUS=8 python -m orl.gpu_lease 8 torchrun --standalone "
                                    f"--nproc_per_node=8 --shutdown-timeout=300 --no-python orl "
                                    f"pretrain --method {method} "), shell
            assert "--threads 10 " in shell
            assert (res["gpu"], res["nodes"], res["cpus_per_gpu"]) == (8, 1, 10) and "mpi" not in res
            assert "--nodes=1" in sbatch and "--cpus-per-gpu=10" in sbatch and sbatch.endswith("--gpus=8"), sbatch
        elif case == "gpus4-nodes2":
            assert ("ORL_EXPECT_GPUS=4 srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=32 "
                    "--kill-on-bad-exit=1 torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d "
                    "--rdzv_endpoint=$(scontrol show hostnames") in shell, shell
            assert (":$((29400 + SLURM_JOB_ID % 1000)) --rdzv_id=$SLURM_JOB_ID --shutdown-timeout=300 "
                    "--no-python orl pretrain --method") in shell
            assert "--threads 8 " in shell
            assert res["mpi"] == "srun" and (res["nodes"], res["tasks"], res["gres"]) == (2, 2, "gpu:4")
            assert "gpu" not in res
            for flag in ("--nodes=2", "--ntasks=2", "--cpus-per-task=32", "--gres=gpu:4"):
                assert flag in sbatch, sbatch
            assert "--ntasks-per-gpu" not in sbatch and "--gpus=" not in sbatch, sbatch
        else:
            assert shell.startswith(f"python -m orl.gpu_lease 1 orl pretrain --method {method} "), shell
            assert "ORL_EXPECT_GPUS" not in shell and res["gpu"] == 0
            assert "--ntasks=1 --cpus-per-task=2" in sbatch and "gpu" not in sbatch.replace("-p part", ""), sbatch
        # SIGTERM the checkpoint lead before the time limit (torchrun waits as long for its workers).
        assert res["slurm_extra"] == "--signal=TERM@300", res
    detection, det_res = jobs["bench_detection"]["shell"], jobs["bench_detection"]["resources"]
    expected = {"gpus8-nodes1": "ORL_EXPECT_GPUS=8 python -m orl.gpu_lease 8 torchrun --standalone --nproc_per_node=8"
                                " --shutdown-timeout=300 --no-python orl ",
                "gpus4-nodes2": "ORL_EXPECT_GPUS=4 python -m orl.gpu_lease 4 torchrun --standalone --nproc_per_node=4"
                                " --shutdown-timeout=300 --no-python orl ",
                "gpus0": "python -m orl.gpu_lease 1 orl "}[case]
    assert detection.startswith(expected + "bench-detection "), detection
    assert det_res["slurm_extra"] == "--signal=TERM@300", det_res
    if gpus:
        # One node, as pretraining, and CPUs for every rank's loader workers (Detectron2: 4 per GPU, + 1).
        det_gpus = pre["gpus"]
        assert (det_res["gpu"], det_res["nodes"], det_res["cpus_per_gpu"]) == (det_gpus, 1, 5), det_res
        det_sbatch = sbatch_line(det_res, 5 * det_gpus)
        assert "--nodes=1" in det_sbatch and "--cpus-per-gpu=5" in det_sbatch, det_sbatch
        assert det_sbatch.endswith(f"--gpus={det_gpus}"), det_sbatch
        assert "--threads 5 " in detection, detection
    else:
        assert det_res["gpu"] == 0 and "nodes" not in det_res, det_res

    if case == "gpus4-nodes2":
        _run_multinode_launcher(jobs["pretrain_byol"]["shell"], tmp_path / "run")


def _run_multinode_launcher(shell: str, where: Path) -> None:
    """Run the multi-node command with stub srun/scontrol/squeue: the endpoint is the job's first host."""
    stubs = where / "bin"
    stubs.mkdir(parents=True)
    (where / "results" / "logs").mkdir(parents=True)
    (stubs / "srun").write_text('#!/bin/sh\necho "ORL_EXPECT_GPUS=$ORL_EXPECT_GPUS srun $*"\n')
    (stubs / "squeue").write_text('#!/bin/sh\necho "gpu[07-08]"\n')  # the jobstep drops $SLURM_JOB_NODELIST
    (stubs / "scontrol").write_text('#!/bin/sh\n[ "$3" = "gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {k: v for k, v in sh.env().items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{stubs}{os.pathsep}{env['PATH']}"
    script = f"set -euo pipefail; {shell}"
    proc = subprocess.run(["bash", "-c", script], cwd=where, env={**env, "SLURM_JOB_ID": "4242"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    launched = (where / "results" / "logs" / "pretrain_byol.log").read_text()
    assert launched.startswith("ORL_EXPECT_GPUS=4 srun --nodes=2 "), launched
    # The port follows the job (29400 + 4242 mod 1000): two jobs sharing a first host do not collide.
    assert "--rdzv_endpoint=gpu07:29642 --rdzv_id=4242 --shutdown-timeout=300 --no-python orl pretrain " in launched, \
        launched
    # Outside a SLURM job it stops with a message, before starting anything.
    proc = subprocess.run(["bash", "-c", script], cwd=where, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "nodes > 1 runs only inside a SLURM job" in proc.stderr, proc.stderr


def test_multinode_without_gpus_is_refused(tmp_path: Path) -> None:
    proc = dry_run(tmp_path, demo_config({"pretrain": {"nodes": 2}}), MODEL)
    assert proc.returncode != 0 and "needs gpus >= 1" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------- GPU-count check
def test_check_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from orl import runtime as launch

    for name in ("ORL_EXPECT_GPUS", "SLURM_GPUS_ON_NODE", "LOCAL_WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert launch.check_gpus() == 0  # nothing asked for: nothing checked
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "2")  # SLURM's count when the rule set none
    assert launch.check_gpus() == 2
    monkeypatch.setenv("ORL_EXPECT_GPUS", "4")  # the rule's request wins
    with pytest.raises(RuntimeError, match=r"asked for 4 GPU\(s\) per node but the process on .* sees 2"):
        launch.check_gpus()
    assert launch.check_gpus(device="cpu") == 0
    monkeypatch.setenv("ORL_EXPECT_GPUS", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match=r"torchrun started 1 process\(es\) .* asked for 2 GPU"):
        launch.check_gpus()
    monkeypatch.setenv("ORL_EXPECT_GPUS", "two")
    with pytest.raises(ValueError, match="not a whole number"):
        launch.check_gpus()


@pytest.mark.parametrize("stage,args", [
    ("pretrain", ["--method", "byol", "--index", "missing.h5", "--out", "m.pt"]),
    ("features", ["--model", "missing.pt", "--index", "missing.h5", "--out", "f.h5"]),
    ("roi-embed", ["--model", "missing.pt", "--index", "i.h5", "--proposals", "p.h5", "--out", "r.h5"]),
    ("bench-detection", ["--weights", "none", "--method-name", "x", "--train-images", "t", "--train-annotations",
                         "t.json", "--val-images", "v", "--val-annotations", "v.json", "--out", "d.json"]),
    ("bench-svm", ["--weights", "w.pth", "--method-name", "x", "--data", "voc", "--out", "s.json"]),
    ("bench-linear", ["--weights", "w.pth", "--method-name", "x", "--train-dir", "t", "--val-dir", "v",
                      "--out", "l.json"]),
    ("bench-semi", ["--weights", "w.pth", "--method-name", "x", "--train-dir", "t", "--val-dir", "v",
                    "--subset-list", "s.txt", "--percent", "1", "--out", "s.json"]),
])
def test_gpu_stages_stop_when_they_see_too_few_gpus(stage: str, args: list[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The GPU stages check first, before reading any input (none of these exists)."""
    from orl.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORL_EXPECT_GPUS", "99")
    assert main([stage, *args]) == 1
    err = capsys.readouterr().err
    assert f"orl {stage}: error: this job asked for 99 GPU(s) per node but the process on" in err, err
    # A multi-node job is refused by every stage but pretraining, which is launched across nodes.
    monkeypatch.delenv("ORL_EXPECT_GPUS")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    if stage == "pretrain":
        from orl import runtime as launch

        assert launch.check_gpus(multi_node=True) == 0
    else:
        assert main([stage, *args]) == 1
        assert "this stage runs on one node but SLURM job" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the local cluster
@pytest.fixture(scope="module")
def cluster_run(local_slurm, tmp_path_factory: pytest.TempPathFactory):
    """The cut-down demo run through `snakemake --profile profiles/slurm-local`: (workdir, its log)."""
    workdir = tmp_path_factory.mktemp("cluster")
    cmd = sh.snakemake_cmd(workdir, CLUSTER_DEMO, "--profile", str(sh.LOCAL_PROFILE), *CLUSTER_TARGETS, limit=420)
    proc = run(cmd, cwd=workdir, timeout=480)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sh.cancel(sh.job_ids(log))
        pytest.fail(f"snakemake on the local SLURM failed ({proc.returncode}):\n{log[-6000:]}")
    return workdir, log


@pytest.mark.slow
def test_cluster_demo_runs_every_job_through_sbatch(cluster_run) -> None:
    workdir, log = cluster_run
    ids = sh.job_ids(log)
    started = re.findall(r"^rule (\w+):$", log, flags=re.M)
    assert sorted(started) == sorted(r for r, n in CLUSTER_RULES.items() for _ in range(n)), started
    assert len(ids) == len(started) == len(set(ids)), "every job must be its own sbatch submission"
    states = sh.job_states(ids)
    assert {i: s for i, (s, _) in states.items()} == {i: "COMPLETED" for i in ids}, states
    assert sorted(c.split("_wildcards_")[0] for _, c in states.values()) == sorted(f"rule_{r}" for r in started)
    logs = sorted(p.relative_to(workdir / ".snakemake" / "slurm_logs") for p in
                  (workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert sorted(p.stem for p in logs) == sorted(ids), logs
    assert {p.parts[0] for p in logs} == {f"rule_{r}" for r in CLUSTER_RULES}
    for target in CLUSTER_TARGETS:
        assert (workdir / target).is_file()
    again = run(sh.snakemake_cmd(workdir, CLUSTER_DEMO, "--profile", str(sh.LOCAL_PROFILE), "-n", *CLUSTER_TARGETS),
                cwd=workdir, timeout=120)
    assert "Nothing to be done" in again.stdout + again.stderr


def _wait_for(predicate, what: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended ({proc.returncode}) before {what}:\n{log.read_text()[-5000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-5000:]}")
        time.sleep(0.2)


def _state_dict(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_preempted_training_resumes_to_the_same_weights(cluster_run, tmp_path: Path) -> None:
    """scancel --signal=TERM mid-run: checkpoint, exit 143, failed job; Snakemake's retry (the profile's `retries`,
    as on the real cluster) resumes from the checkpoint and ends with the weights of an uninterrupted run."""
    workdir, _ = cluster_run
    ckpts = workdir / "results" / "pretrain" / "byol" / "checkpoints"
    shutil.rmtree(ckpts, ignore_errors=True)  # the short training of the cluster run left its own
    # The uninterrupted reference: the same rule on the local executor, from copies of the same inputs.
    ref = tmp_path / "reference"
    for part in ("data", "index"):
        shutil.copytree(workdir / "results" / part, ref / "results" / part)  # mtimes kept: nothing else reruns
    ref_log = tmp_path / "reference.log"
    with open(ref_log, "w") as out:  # runs beside the cluster job (the local node has a core for each)
        reference = subprocess.Popen(sh.snakemake_cmd(ref, PREEMPT, "--cores", "1", MODEL, limit=400),
                                     cwd=ref, env=sh.env(), stdout=out, stderr=subprocess.STDOUT)

    run_log = tmp_path / "snakemake.log"
    train_log = workdir / "results" / "logs" / "pretrain_byol.log"
    cmd = sh.snakemake_cmd(workdir, PREEMPT, "--profile", str(sh.LOCAL_PROFILE), "--retries", "1", MODEL, limit=400)
    ids: list[str] = []
    try:
        with open(run_log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=workdir, env=sh.env(), stdout=out, stderr=subprocess.STDOUT)
            _wait_for(lambda: sh.job_ids(run_log.read_text()), "the pretrain job's submission", proc, run_log)
            _wait_for(lambda: any(ckpts.glob("ckpt-*.pt")), "the first checkpoint", proc, run_log)
            first = sh.job_ids(run_log.read_text())[0]
            # What a GraceTime preemption and sbatch --signal=TERM@t do: SIGTERM to the job's tasks. (--full and
            # --batch also signal the batch script, where the plugin's srun wrapper answers SIGTERM by killing the
            # step: the checkpoint on SIGTERM is then lost to a race, the periodic ones are not.)
            subprocess.run(["scancel", "--signal=TERM", first], check=True, timeout=30)
            _wait_for(lambda: sh.job_states([first]).get(first, ("?",))[0] in ("FAILED", "COMPLETED", "CANCELLED"),
                      "the signalled job's end", proc, run_log)
            stopped = train_log.read_text()  # before the retry overwrites it
            assert proc.wait(timeout=300) == 0, run_log.read_text()[-5000:]
        ids = sh.job_ids(run_log.read_text())
        states = sh.job_states(ids)
        assert [states[i][0] for i in ids] == ["FAILED", "COMPLETED"], states
        m = re.search(r"interrupted at step (\d+)/16; checkpoint", stopped)
        assert "received signal 15" in stopped and m and 0 < int(m.group(1)) < 16, stopped[-2000:]
        assert f"resuming from step {m.group(1)}/16" in train_log.read_text(), train_log.read_text()[-2000:]
    except BaseException:
        reference.kill()
        raise
    finally:
        sh.cancel([i for i, (s, _) in sh.job_states(ids).items() if s in ("PENDING", "RUNNING")])
    reference.wait(timeout=400)
    ref_out = ref_log.read_text()
    assert reference.returncode == 0, ref_out[-5000:]
    assert re.findall(r"^(?:local)?rule (\w+):$", ref_out, flags=re.M) == ["pretrain_byol"], ref_out[-3000:]
    resumed, straight = _state_dict(workdir / MODEL), _state_dict(ref / MODEL)
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


# ------------------------------------------------------------------------------------ a killed Snakemake
@pytest.mark.slow
def test_killed_snakemake_recovers_without_redoing_finished_stages(tmp_path: Path) -> None:
    """SIGKILL of Snakemake and its jobs mid-training; --unlock, then --rerun-incomplete finishes the rest only."""
    workdir = tmp_path / "run"
    log = tmp_path / "killed.log"
    cmd = sh.snakemake_cmd(workdir, PREEMPT, "--cores", "1", MODEL, limit=300)
    ckpts = workdir / "results" / "pretrain" / "byol" / "checkpoints"
    with open(log, "w") as out:
        # Own process group: SIGKILL reaches Snakemake and its running job at once, like a lost login node.
        proc = subprocess.Popen(cmd, cwd=workdir, env=sh.env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_for(lambda: any(ckpts.glob("ckpt-*.pt")), "the first checkpoint", proc, log)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert not (workdir / MODEL).exists()
    finished = [workdir / "results" / "index" / "images.h5", *sorted((workdir / "results" / "data").rglob("*.*"))]
    mtimes = {p: p.stat().st_mtime_ns for p in finished}

    locked = run(sh.snakemake_cmd(workdir, PREEMPT, "--cores", "1", MODEL), cwd=workdir, timeout=120)
    assert locked.returncode != 0 and "Directory cannot be locked" in locked.stdout + locked.stderr
    unlock = run(sh.snakemake_cmd(workdir, PREEMPT, "--unlock", MODEL), cwd=workdir, timeout=120)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    again = run(sh.snakemake_cmd(workdir, PREEMPT, "--cores", "1", "--rerun-incomplete", MODEL), cwd=workdir,
                timeout=360)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-5000:]
    assert re.findall(r"^(?:local)?rule (\w+):$", out, flags=re.M) == ["pretrain_byol"], out[-3000:]
    assert {p: p.stat().st_mtime_ns for p in finished} == mtimes
    assert "resuming from step" in (workdir / "results" / "logs" / "pretrain_byol.log").read_text()
    assert (workdir / MODEL).is_file()
