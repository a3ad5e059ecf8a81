# Stage 2a-2c: feature bank and kNN from the stage-1 model, sharded selective-search proposals.


rule features:
    input:
        model=f"{R}/pretrain/byol/model.pt",
        index=INDEX,
    output:
        f"{R}/mining/features.h5",
    params:
        resize=config["features"]["resize"],
        crop=config["features"]["crop"],
        batch_size=config["features"]["batch_size"],
        workers=config["features"]["workers"],
        precision=config["features"]["precision"],
        lease=auto_device_lease(),
    threads: config["features"]["threads"]
    benchmark:
        f"{R}/benchmarks/features.tsv",
    log:
        f"{R}/logs/features.log",
    shell:
        "{params.lease}orl features --model {input.model:q} --index {input.index:q} --out {output:q}"
        " --resize {params.resize} --crop {params.crop} --batch-size {params.batch_size}"
        " --workers {params.workers} --precision {params.precision} --threads {threads} > {log:q} 2>&1"


rule knn:
    input:
        features=f"{R}/mining/features.h5",
        index=INDEX,
    output:
        f"{R}/mining/knn.h5",
    params:
        k=config["knn"]["k"],
        route=config["knn"]["route"],
        memory_gb=config["knn"]["memory_gb"],
        # auto, faiss-gpu and torch take a visible GPU; the CPU routes need none.
        lease=auto_device_lease() if config["knn"]["route"] in ("auto", "faiss-gpu", "torch") else "",
    threads: config["knn"]["threads"]
    benchmark:
        f"{R}/benchmarks/knn.tsv",
    log:
        f"{R}/logs/knn.log",
    shell:
        "{params.lease}orl knn --features {input.features:q} --index {input.index:q} --out {output:q} --k {params.k}"
        " --route {params.route} --memory-gb {params.memory_gb} --threads {threads} > {log:q} 2>&1"


rule proposals:
    input:
        INDEX,
    output:
        f"{R}/mining/proposals/part-{{shard}}.h5",
    wildcard_constraints:
        shard=r"\d+",
    params:
        shards=PROPOSALS["shards"],
        backend=PROPOSALS["backend"],
        seed=PROPOSALS["seed"],
        max_side=optional_flag("--max-side", PROPOSALS["max_side"]),
        guard=f"--guard-long-side {PROPOSALS['guard_long_side'] or 0} --guard-aspect {PROPOSALS['guard_aspect'] or 0}",
        scale=PROPOSALS["scale"],
        sigma=PROPOSALS["sigma"],
        min_size=PROPOSALS["min_size"],
    threads: PROPOSALS["threads"]
    resources:
        mem_mb=PROPOSALS["mem_mb"],
        runtime=PROPOSALS["runtime"],
    benchmark:
        f"{R}/benchmarks/proposals/part-{{shard}}.tsv",
    log:
        f"{R}/logs/proposals/part-{{shard}}.log",
    shell:
        "orl proposals --index {input:q} --shard {wildcards.shard} --shards {params.shards}"
        " --backend {params.backend} --seed {params.seed} {params.max_side} {params.guard} --scale {params.scale}"
        " --sigma {params.sigma} --min-size {params.min_size} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule gather_proposals:
    input:
        index=INDEX,
        parts=expand(f"{R}/mining/proposals/part-{{shard}}.h5", shard=range(PROPOSALS["shards"])),
    output:
        PROPOSALS_OUT,
    params:
        min_size=config["box_filter"]["min_size"],
        max_aspect=config["box_filter"]["max_aspect"],
        iou=config["box_filter"]["iou"],
        max_boxes=config["box_filter"]["max_boxes"],
    benchmark:
        f"{R}/benchmarks/gather_proposals.tsv",
    log:
        f"{R}/logs/gather_proposals.log",
    shell:
        "orl gather-proposals --index {input.index:q} --parts {input.parts:q} --out {output[0]:q} --quality {output[1]:q}"
        " --filter-min-size {params.min_size} --filter-max-aspect {params.max_aspect}"
        " --filter-iou {params.iou} --filter-max-boxes {params.max_boxes} > {log:q} 2>&1"
