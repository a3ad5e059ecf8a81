# Downstream benchmarks of every exported backbone, and the results table.

BENCH = config["bench"]
FROZEN = BENCH["frozen"]
LINEAR_DATASETS = list(BENCH["linear"]["datasets"])
if "frozen" in BENCH["enabled"] and "linear" in BENCH["enabled"] and "demo" in LINEAR_DATASETS:
    raise ValueError("bench: linear dataset 'demo' and the frozen benchmark would both write linear_demo.json; "
                     "rename the linear dataset or drop 'frozen' from bench.enabled")


rule bench_crops:
    input:
        DEMO_DIR,
    output:
        directory(DEMO_CROPS),
    params:
        size=BENCH["crops"]["size"],
        caps=" ".join(
            optional_flag(flag, BENCH["crops"][key])
            for flag, key in (("--max-train-per-class", "max_train_per_class"), ("--max-val-per-class", "max_val_per_class"))
        ),
    benchmark:
        f"{R}/benchmarks/bench_crops.tsv",
    log:
        f"{R}/logs/bench_crops.log",
    shell:
        "orl bench-crops --demo-root {input:q} --out {output:q} --size {params.size} {params.caps} > {log:q} 2>&1"


rule bench_svm:
    input:
        weights=f"{R}/export/{{method}}/backbone.pth",
        # The data folder is an input, so a missing or unset VOC2007 folder stops this rule with the path named.
        data=DEMO_DIR if BENCH["svm"]["data"] == "demo" else (BENCH["svm"]["voc_root"] or "bench.svm.voc_root (not set in the config)"),
    output:
        svm=f"{R}/bench/{{method}}/voc07_svm.json",
        lowshot=f"{R}/bench/{{method}}/voc07_lowshot.json",
        features=f"{R}/bench/{{method}}/voc07_features.h5",
    params:
        data=quoted("--data", "demo", "--demo-root", DEMO_DIR) if BENCH["svm"]["data"] == "demo" else quoted("--data", "voc", "--voc-root", BENCH["svm"]["voc_root"]),
        image_size=BENCH["svm"]["image_size"],
        batch_size=BENCH["svm"]["batch_size"],
        costs=optional_flag("--costs", ",".join(str(c) for c in BENCH["svm"]["costs"] or [])),
        folds=BENCH["svm"]["folds"],
        k_values=",".join(str(k) for k in BENCH["svm"]["k_values"]),
        samples=BENCH["svm"]["samples"],
        seed=BENCH["svm"]["seed"],
        workers=BENCH["workers"],
        lease=auto_device_lease(BENCH["gpus"]),
    threads: BENCH["threads"]
    resources:
        mem_mb=BENCH["mem_mb"],
        runtime=BENCH["runtime"],
        gpu=BENCH["gpus"],
    benchmark:
        f"{R}/benchmarks/bench/{{method}}/svm.tsv",
    log:
        f"{R}/logs/bench/{{method}}/svm.log",
    shell:
        "{params.lease}orl bench-svm --weights {input.weights:q} --method-name {wildcards.method} {params.data}"
        " --features {output.features:q} --image-size {params.image_size} --batch-size {params.batch_size}"
        " {params.costs} --folds {params.folds} --out {output.svm:q} --lowshot-out {output.lowshot:q}"
        " --k-values {params.k_values} --samples {params.samples} --seed {params.seed}"
        " --workers {params.workers} --threads {threads} > {log:q} 2>&1"


def linear_split(wildcards, split):
    """train_dir / val_dir of a linear-evaluation dataset (the demo crops when unset)."""
    path = BENCH["linear"]["datasets"][wildcards.dataset].get(f"{split}_dir")
    return path or f"{DEMO_CROPS}/{split}"


rule bench_linear:
    wildcard_constraints:
        # Only the configured datasets: linear_demo.json of the frozen protocol is not this rule's.
        dataset="|".join(LINEAR_DATASETS) or "(?!)",
    input:
        weights=f"{R}/export/{{method}}/backbone.pth",
        crops=lambda wc: [] if BENCH["linear"]["datasets"][wc.dataset].get("train_dir") else [DEMO_CROPS],
    output:
        f"{R}/bench/{{method}}/linear_{{dataset}}.json",
    params:
        train_dir=lambda wc: linear_split(wc, "train"),
        val_dir=lambda wc: linear_split(wc, "val"),
        epochs=lambda wc: BENCH["linear"]["datasets"][wc.dataset].get("epochs", 28),
        color_aug=lambda wc: "--color-aug" if BENCH["linear"]["datasets"][wc.dataset].get("color_aug") else "",
        batch_size=BENCH["linear"]["batch_size"],
        lr=BENCH["linear"]["lr"],
        crop_size=BENCH["linear"]["crop_size"],
        workers=BENCH["workers"],
        lease=auto_device_lease(BENCH["gpus"]),
    threads: BENCH["threads"]
    resources:
        mem_mb=BENCH["mem_mb"],
        runtime=BENCH["runtime"],
        gpu=BENCH["gpus"],
    benchmark:
        f"{R}/benchmarks/bench/{{method}}/linear_{{dataset}}.tsv",
    log:
        f"{R}/logs/bench/{{method}}/linear_{{dataset}}.log",
    shell:
        "{params.lease}orl bench-linear --weights {input.weights:q} --method-name {wildcards.method}"
        " --train-dir {params.train_dir:q} --val-dir {params.val_dir:q} --benchmark-name linear_{wildcards.dataset}"
        " --epochs {params.epochs} {params.color_aug} --batch-size {params.batch_size} --lr {params.lr}"
        " --crop-size {params.crop_size} --workers {params.workers} --threads {threads} --out {output:q} > {log:q} 2>&1"


def frozen_split(split):
    """train_dir / val_dir of the frozen-feature protocols (the demo crops when unset)."""
    return FROZEN[f"{split}_dir"] or f"{DEMO_CROPS}/{split}"


# The demo-scale linear and kNN protocols (linear_demo, knn_demo) on features extracted once per method.
rule bench_frozen:
    input:
        weights=f"{R}/export/{{method}}/backbone.pth",
        crops=[] if FROZEN["train_dir"] else [DEMO_CROPS],
    output:
        linear=f"{R}/bench/{{method}}/linear_demo.json",
        knn=f"{R}/bench/{{method}}/knn_demo.json",
        features=f"{R}/bench/{{method}}/frozen_features.h5",
    params:
        train_dir=frozen_split("train"),
        val_dir=frozen_split("val"),
        image_size=FROZEN["image_size"],
        batch_size=FROZEN["batch_size"],
        k=FROZEN["k"],
        temperature=FROZEN["temperature"],
        weight_decays=",".join(f"{wd:g}" for wd in FROZEN["weight_decays"]),
        folds=FROZEN["folds"],
        workers=BENCH["workers"],
        lease=auto_device_lease(BENCH["gpus"]),
    threads: BENCH["threads"]
    resources:
        mem_mb=BENCH["mem_mb"],
        runtime=BENCH["runtime"],
        gpu=BENCH["gpus"],
    benchmark:
        f"{R}/benchmarks/bench/{{method}}/frozen.tsv",
    log:
        f"{R}/logs/bench/{{method}}/frozen.log",
    shell:
        "{params.lease}orl bench-frozen --weights {input.weights:q} --method-name {wildcards.method}"
        " --train-dir {params.train_dir:q} --val-dir {params.val_dir:q} --features {output.features:q}"
        " --linear-out {output.linear:q} --knn-out {output.knn:q} --image-size {params.image_size}"
        " --batch-size {params.batch_size} --k {params.k} --temperature {params.temperature}"
        " --weight-decays {params.weight_decays} --folds {params.folds} --workers {params.workers}"
        " --threads {threads} > {log:q} 2>&1"


SEMI_NAMES = [f"semi_{p:g}pct" for p in BENCH["semi"]["percents"]]


rule bench_semi:
    input:
        weights=f"{R}/export/{{method}}/backbone.pth",
        crops=[] if BENCH["semi"]["train_dir"] else [DEMO_CROPS],
    output:
        [f"{R}/bench/{{method}}/{name}.json" for name in SEMI_NAMES],
    params:
        train_dir=BENCH["semi"]["train_dir"] or f"{DEMO_CROPS}/train",
        val_dir=BENCH["semi"]["val_dir"] or f"{DEMO_CROPS}/val",
        percents=" ".join(f"{p:g}" for p in BENCH["semi"]["percents"]),
        subsets=optional_flags("--subset-list", BENCH["semi"]["subset_lists"] or []),
        epochs=BENCH["semi"]["epochs"],
        batch_size=BENCH["semi"]["batch_size"],
        crop_size=BENCH["semi"]["crop_size"],
        workers=BENCH["workers"],
        lease=auto_device_lease(BENCH["gpus"]),
    threads: BENCH["threads"]
    resources:
        mem_mb=BENCH["mem_mb"],
        runtime=BENCH["runtime"],
        gpu=BENCH["gpus"],
    benchmark:
        f"{R}/benchmarks/bench/{{method}}/semi.tsv",
    log:
        f"{R}/logs/bench/{{method}}/semi.log",
    shell:
        "{params.lease}orl bench-semi --weights {input.weights:q} --method-name {wildcards.method}"
        " --train-dir {params.train_dir:q} --val-dir {params.val_dir:q} --percent {params.percents} {params.subsets}"
        " --out {output:q} --epochs {params.epochs} --batch-size {params.batch_size} --crop-size {params.crop_size}"
        " --workers {params.workers} --threads {threads} > {log:q} 2>&1"


def bench_results(method):
    """Every result JSON the enabled benchmarks write for one method."""
    out = []
    if "svm" in BENCH["enabled"]:
        out += [f"{R}/bench/{method}/voc07_svm.json", f"{R}/bench/{method}/voc07_lowshot.json"]
    if "linear" in BENCH["enabled"]:
        out += [f"{R}/bench/{method}/linear_{d}.json" for d in BENCH["linear"]["datasets"]]
    if "frozen" in BENCH["enabled"]:
        out += [f"{R}/bench/{method}/linear_demo.json", f"{R}/bench/{method}/knn_demo.json"]
    if "semi" in BENCH["enabled"]:
        out += [f"{R}/bench/{method}/{name}.json" for name in SEMI_NAMES]
    if "detection" in BENCH["enabled"]:
        out += [f"{R}/bench/{method}/detection.json"]
    return out


BENCH_RESULTS = [path for method in EXPORT_METHODS for path in bench_results(method)]


rule bench_summary:
    input:
        BENCH_RESULTS,
    output:
        csv=report(f"{R}/bench/summary.csv", caption="../report/results_table.rst", category="Results"),
        md=f"{R}/bench/summary.md",
    benchmark:
        f"{R}/benchmarks/bench_summary.tsv",
    log:
        f"{R}/logs/bench_summary.log",
    shell:
        "orl bench-summary --inputs {input:q} --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


DET = BENCH["detection"]


def detection_data(key, demo_value):
    """A configured detection data path, or the demo's."""
    return DET[key] or demo_value


# CPUs of the detection job: each of its processes (one per GPU) needs its own loader workers, Detectron2's
# DATALOADER.NUM_WORKERS = 4 per GPU, plus one for the process itself; never fewer than bench.threads.
DET_PROCESSES = max(1, DET["gpus"])
DET_THREADS = max(BENCH["threads"], 5 * DET_PROCESSES if DET["gpus"] > 0 else 0)
DET_WORKERS = max(0, min(BENCH["workers"], DET_THREADS // DET_PROCESSES - 1))


rule bench_detection:
    input:
        weights=f"{R}/export/{{method}}/backbone.pth",
        data=[] if DET["train_images"] else [DEMO_DIR],
    output:
        f"{R}/bench/{{method}}/detection.json",
    params:
        launcher=gpu_launcher(DET["gpus"]),
        train_images=detection_data("train_images", f"{DEMO_DIR}/train"),
        train_annotations=detection_data("train_annotations", f"{DEMO_DIR}/annotations/instances_train.json"),
        val_images=detection_data("val_images", f"{DEMO_DIR}/val"),
        val_annotations=detection_data("val_annotations", f"{DEMO_DIR}/annotations/instances_val.json"),
        iterations=DET["iterations"],
        batch_size=DET["batch_size"],
        lr=DET["lr"],
        warmup_iters=DET["warmup_iters"],
        milestones=" ".join(str(m) for m in DET["milestones"]),
        train_min_sizes=" ".join(str(s) for s in DET["train_min_sizes"]),
        train_max_size=DET["train_max_size"],
        test_min_size=DET["test_min_size"],
        test_max_size=DET["test_max_size"],
        fpn_channels=DET["fpn_channels"],
        box_head_dim=DET["box_head_dim"],
        roi_batch_size=DET["roi_batch_size"],
        test_proposals=DET["test_proposals"],
        detections_per_image=DET["detections_per_image"],
        checkpoint_every=DET["checkpoint_every"],
        workers=DET_WORKERS,
        per_process_threads=max(1, DET_THREADS // DET_PROCESSES),
    threads: DET_THREADS
    resources:
        mem_mb=DET["mem_mb"],
        runtime=DET["runtime"],
        # nodes=1 and cpus_per_gpu, as pretraining: the GPUs are never split across nodes.
        **gpu_resources(DET["gpus"], 1, DET_THREADS),
        **stop_signal_resources(),
    benchmark:
        f"{R}/benchmarks/bench/{{method}}/detection.tsv",
    log:
        f"{R}/logs/bench/{{method}}/detection.log",
    shell:
        "{params.launcher} bench-detection --weights {input.weights:q} --method-name {wildcards.method}"
        " --train-images {params.train_images:q} --train-annotations {params.train_annotations:q}"
        " --val-images {params.val_images:q} --val-annotations {params.val_annotations:q}"
        " --iterations {params.iterations} --batch-size {params.batch_size} --lr {params.lr}"
        " --warmup-iters {params.warmup_iters} --milestones {params.milestones}"
        " --train-min-sizes {params.train_min_sizes} --train-max-size {params.train_max_size}"
        " --test-min-size {params.test_min_size} --test-max-size {params.test_max_size}"
        " --fpn-channels {params.fpn_channels} --box-head-dim {params.box_head_dim}"
        " --roi-batch-size {params.roi_batch_size} --test-proposals {params.test_proposals}"
        " --detections-per-image {params.detections_per_image} --checkpoint-every {params.checkpoint_every}"
        " --workers {params.workers} --threads {params.per_process_threads} --out {output:q} > {log:q} 2>&1"
