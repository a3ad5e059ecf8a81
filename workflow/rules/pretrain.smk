# Stage 1 (BYOL and the image-level baselines) and stage 3 (ORL): one rule per method, all running `orl pretrain`.
# ORL starts from random init and reads the stage-2 correspondence artifact; the others read only the images.


def pretrain_setting(method, key):
    """A pretraining setting for one method (an ablation uses ORL's): its override in pretrain.methods, else shared."""
    return config["pretrain"]["methods"].get(method_of(method), {}).get(key, config["pretrain"][key])


# GPU rules tell `orl` how many GPUs per node they asked for; it stops at once when it sees fewer
# (orl.runtime.check_gpus reads this variable).
EXPECT_GPUS = "ORL_EXPECT_GPUS"
# First host of the job's allocation: the c10d rendezvous endpoint of a multi-node run. The SLURM jobstep plugin
# drops $SLURM_JOB_NODELIST from the rule's environment (it keeps $SLURM_JOB_ID), hence the squeue fallback.
FIRST_HOST = '$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(squeue -h -o %N -j $SLURM_JOB_ID)}" | head -n 1)'
# Default rendezvous port of a multi-node run: one per job, so two trainings whose first host is the same node
# (two methods, or two workflows) do not collide on one port.
JOB_RDZV_PORT = "$((29400 + SLURM_JOB_ID % 1000))"
# Seconds between the stop signal and the job's end: SLURM sends SIGTERM this long before the time limit
# (sbatch --signal, stop_signal_resources), and torchrun gives its workers as long to finish the step and write
# the checkpoint before it kills them (--shutdown-timeout; torchrun's own default is 30 s).
STOP_SIGNAL_LEAD_S = 300


def gpu_lease(gpus):
    """Prefix that runs a local job on `gpus` GPUs no other local job holds (orl.gpu_lease; a no-op under SLURM)."""
    return f"python -m orl.gpu_lease {gpus} " if gpus > 0 else ""


def auto_device_lease(gpus=0):
    """gpu_lease for a stage that takes a visible GPU by itself (device "auto"): at least one GPU, so local jobs
    never share one; without GPUs, and under SLURM, it changes nothing."""
    return gpu_lease(max(1, gpus))


def gpu_launcher(gpus, nodes=1, processes=1, threads=1, port=None, stop_lead_s=STOP_SIGNAL_LEAD_S):
    """The command that starts `orl` for a training rule, with the GPUs per node it must see in $ORL_EXPECT_GPUS.

    gpus <= 1 on one node: `orl`. More GPUs (or CPU processes for gloo DDP tests) on one node: torchrun
    --standalone with one process each. nodes > 1 (SLURM only): srun starts one torchrun per node, and they meet at
    a c10d rendezvous on the job's first host (port None: one derived from the job id). torchrun waits stop_lead_s
    for its workers after forwarding a SIGTERM. On one node the GPUs come from a local lease (gpu_lease).
    """
    expect = f"{EXPECT_GPUS}={gpus} " if gpus > 0 else ""
    shutdown = f"--shutdown-timeout={stop_lead_s}"
    if nodes > 1:
        if gpus < 1:
            raise ValueError(f"training on {nodes} nodes needs gpus >= 1 (GPUs per node)")
        return (
            ': "${SLURM_JOB_ID:?nodes > 1 runs only inside a SLURM job: use --profile profiles/slurm}"; '
            f"{expect}srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpus-per-task={threads}"
            f" --kill-on-bad-exit=1 torchrun --nnodes={nodes} --nproc_per_node={gpus} --rdzv_backend=c10d"
            f" --rdzv_endpoint={FIRST_HOST}:{port or JOB_RDZV_PORT} --rdzv_id=$SLURM_JOB_ID {shutdown} --no-python orl"
        )
    procs = gpus if gpus > 0 else processes
    if procs <= 1:
        return f"{expect}{auto_device_lease(gpus)}orl"
    return f"{expect}{gpu_lease(gpus)}torchrun --standalone --nproc_per_node={procs} {shutdown} --no-python orl"


def stop_signal_resources():
    """SLURM resources of a training rule that checkpoints on SIGTERM: the signal STOP_SIGNAL_LEAD_S before the end.

    Only the job's tasks are signalled (the batch script and the plugin's srun wrapper are left alone), so the
    trainer always gets to write its checkpoint; the job then ends with 143 and the retry resumes.
    """
    return {"slurm_extra": f"--signal=TERM@{STOP_SIGNAL_LEAD_S}"}


def gpu_resources(gpus, nodes=1, threads=1):
    """SLURM resources of a training rule (snakemake-executor-plugin-slurm names) besides mem_mb and runtime.

    One node: `gpu` (sbatch --gpus), cpus_per_gpu and nodes=1, so the GPUs are never split across nodes. Several
    nodes: gres gpu:<per node>, one task per node running the rule's own srun (mpi), cpus_per_task per node;
    tasks_per_gpu=0 stops the plugin from turning `tasks` into --ntasks-per-gpu.
    """
    if gpus < 1:
        return {"gpu": 0}
    if nodes <= 1:
        return {"gpu": gpus, "nodes": 1, "cpus_per_gpu": max(1, threads // gpus)}
    return {"gres": f"gpu:{gpus}", "nodes": nodes, "tasks": nodes, "tasks_per_gpu": 0, "mpi": "srun",
            "cpus_per_task": threads}


def pretrain_launcher(method):
    """gpu_launcher for one pretraining method."""
    gpus, nodes, processes, threads, port = (
        pretrain_setting(method, key) for key in ("gpus", "nodes", "processes", "threads", "rdzv_port")
    )
    return gpu_launcher(gpus, nodes, processes, threads, port)


def method_args(method):
    """The run's constructor arguments as stable `key=value` words (sorted, so the shell text never shuffles).

    An ORL ablation takes ORL's arguments with its own overrides on top.
    """
    args = dict(config["pretrain"]["methods"].get(method_of(method), {}).get("method_args", {}))
    args.update(config["orl_ablations"].get(method, {}))
    return [f"{k}={v}" for k, v in sorted(args.items())]


def optional_number(flag, method, key):
    """'--flag value' for a setting that may be null (= the method's paper default)."""
    return optional_flag(flag, pretrain_setting(method, key))


for _method in PRETRAIN_METHODS + ORL_RUNS:

    rule:
        name:
            f"pretrain_{_method}"
        input:
            index=INDEX,
            correspondence=[f"{R}/mining/correspondence.h5"] if method_of(_method) == "orl" else [],
            knn_crops=[DEMO_CROPS] if knn_monitor_dirs() and not KNN_MONITOR["train_dir"] else [],
        output:
            f"{R}/pretrain/{_method}/model.pt",
        params:
            launcher=pretrain_launcher(_method),
            method=method_of(_method),
            out_dir=f"{R}/pretrain/{_method}",
            arch=pretrain_setting(_method, "arch"),
            epochs=pretrain_setting(_method, "epochs"),
            batch_size=pretrain_setting(_method, "batch_size"),
            accum_steps=pretrain_setting(_method, "accum_steps"),
            image_size=pretrain_setting(_method, "image_size"),
            lr=optional_number("--lr", _method, "lr"),
            base_batch=optional_number("--base-batch", _method, "base_batch"),
            weight_decay=optional_number("--weight-decay", _method, "weight_decay"),
            warmup_epochs=optional_number("--warmup-epochs", _method, "warmup_epochs"),
            workers=pretrain_setting(_method, "workers"),
            pipeline=pretrain_setting(_method, "pipeline"),
            decode=pretrain_setting(_method, "decode"),
            checkpoint_every=pretrain_setting(_method, "checkpoint_every"),
            seed=pretrain_setting(_method, "seed"),
            precision=pretrain_setting(_method, "precision"),
            method_args=optional_flags("--method-args", method_args(_method)),
            knn_monitor=knn_monitor_flags(pretrain_setting(_method, "image_size")),
            orl_inputs=(
                quoted("--correspondence", f"{R}/mining/correspondence.h5", "--roi-size", pretrain_setting(_method, "roi_size"))
                if method_of(_method) == "orl"
                else ""
            ),
            per_process_threads=max(1, pretrain_setting(_method, "threads") // max(1, pretrain_setting(_method, "gpus"), pretrain_setting(_method, "processes"))),
        threads: pretrain_setting(_method, "threads")
        resources:
            mem_mb=pretrain_setting(_method, "mem_mb"),
            runtime=pretrain_setting(_method, "runtime"),
            **gpu_resources(pretrain_setting(_method, "gpus"), pretrain_setting(_method, "nodes"), pretrain_setting(_method, "threads")),
            **stop_signal_resources(),
        benchmark:
            f"{R}/benchmarks/pretrain_{_method}.tsv",
        log:
            f"{R}/logs/pretrain_{_method}.log",
        shell:
            "{params.launcher} pretrain --method {params.method} --index {input.index:q} --out {output:q}"
            " --arch {params.arch} --epochs {params.epochs} --batch-size {params.batch_size}"
            " --accum-steps {params.accum_steps} --image-size {params.image_size} {params.lr} {params.base_batch}"
            " {params.weight_decay} {params.warmup_epochs} --workers {params.workers} --pipeline {params.pipeline}"
            " --decode {params.decode}"
            " --threads {params.per_process_threads} --checkpoint-every {params.checkpoint_every}"
            " --seed {params.seed} --precision {params.precision} {params.orl_inputs} {params.method_args}"
            " {params.knn_monitor} > {log:q} 2>&1"


# Weight export: the online backbone as a torchvision state_dict and as Detectron2 weights, for every method and a
# random-init reference.
for _method in EXPORT_METHODS:

    rule:
        name:
            f"export_{_method}"
        input:
            [] if _method == "random" else [f"{R}/pretrain/{_method}/model.pt"],
        output:
            torchvision=f"{R}/export/{_method}/backbone.pth",
            detectron2=f"{R}/export/{_method}/backbone_d2.pkl",
            provenance=f"{R}/export/{_method}/export.json",
        params:
            source=(
                quoted("--random-init", "--arch", config["pretrain"]["arch"], "--seed", config["pretrain"]["seed"])
                if _method == "random"
                else quoted("--model", f"{R}/pretrain/{_method}/model.pt")
            ),
            out_dir=f"{R}/export/{_method}",
        benchmark:
            f"{R}/benchmarks/export_{_method}.tsv",
        log:
            f"{R}/logs/export_{_method}.log",
        shell:
            "orl export {params.source} --out-dir {params.out_dir:q} > {log:q} 2>&1"
