# Stage 2d: filter and embed each image's boxes once (sharded), mine the top RoI pairs (sharded), gather.

CORR = config["correspondence"]
BOX_FILTER = config["box_filter"]
EMBED_PARTS = expand(f"{R}/mining/roi_embeddings/part-{{shard}}.h5", shard=range(CORR["embed_shards"]))
PAIR_PARTS = expand(f"{R}/mining/pairs/part-{{shard}}.h5", shard=range(CORR["pair_shards"]))


rule roi_embed:
    input:
        model=f"{R}/pretrain/byol/model.pt",
        index=INDEX,
        proposals=f"{R}/mining/proposals.h5",
    output:
        f"{R}/mining/roi_embeddings/part-{{shard}}.h5",
    wildcard_constraints:
        shard=r"\d+",
    params:
        shards=CORR["embed_shards"],
        mode=CORR["mode"],
        crop_size=CORR["crop_size"],
        image_size=CORR["image_size"],
        dtype=CORR["dtype"],
        precision=CORR["precision"],
        batch_size=CORR["batch_size"],
        workers=CORR["workers"],
        min_size=BOX_FILTER["min_size"],
        max_aspect=BOX_FILTER["max_aspect"],
        iou=BOX_FILTER["iou"],
        max_boxes=BOX_FILTER["max_boxes"],
        lease=auto_device_lease(CORR["gpus"]),
    threads: CORR["threads"]
    resources:
        mem_mb=CORR["mem_mb"],
        runtime=CORR["runtime"],
        gpu=CORR["gpus"],
    benchmark:
        f"{R}/benchmarks/roi_embeddings/part-{{shard}}.tsv",
    log:
        f"{R}/logs/roi_embeddings/part-{{shard}}.log",
    shell:
        "{params.lease}orl roi-embed --model {input.model:q} --index {input.index:q} --proposals {input.proposals:q}"
        " --shard {wildcards.shard} --shards {params.shards} --mode {params.mode} --crop-size {params.crop_size}"
        " --image-size {params.image_size} --min-size {params.min_size} --max-aspect {params.max_aspect}"
        " --iou {params.iou} --max-boxes {params.max_boxes} --dtype {params.dtype} --precision {params.precision}"
        " --batch-size {params.batch_size} --workers {params.workers} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule mine_pairs:
    input:
        index=INDEX,
        knn=f"{R}/mining/knn.h5",
        embeddings=EMBED_PARTS,
    output:
        f"{R}/mining/pairs/part-{{shard}}.h5",
    wildcard_constraints:
        shard=r"\d+",
    params:
        shards=CORR["pair_shards"],
        ratio=CORR["ratio"],
        cache_gb=CORR["cache_gb"],
    threads: CORR["threads"]
    resources:
        mem_mb=CORR["mem_mb"],
        runtime=CORR["runtime"],
    benchmark:
        f"{R}/benchmarks/pairs/part-{{shard}}.tsv",
    log:
        f"{R}/logs/pairs/part-{{shard}}.log",
    shell:
        "orl mine-pairs --index {input.index:q} --knn {input.knn:q} --embeddings {input.embeddings:q}"
        " --shard {wildcards.shard} --shards {params.shards} --ratio {params.ratio} --cache-gb {params.cache_gb}"
        " --threads {threads} --out {output:q} > {log:q} 2>&1"


rule gather_correspondence:
    input:
        index=INDEX,
        knn=f"{R}/mining/knn.h5",
        proposals=f"{R}/mining/proposals.h5",
        embeddings=EMBED_PARTS,
        pairs=PAIR_PARTS,
    output:
        CORRESPONDENCE_OUT,
    params:
        quality=quoted("--quality", PAIR_QUALITY, "--quality-seed", CORR["quality_seed"]) if HAS_ANNOTATIONS else "",
    benchmark:
        f"{R}/benchmarks/gather_correspondence.tsv",
    log:
        f"{R}/logs/gather_correspondence.log",
    shell:
        "orl gather-correspondence --index {input.index:q} --knn {input.knn:q} --proposals {input.proposals:q}"
        " --embeddings {input.embeddings:q} --pairs {input.pairs:q} --out {output[0]:q} {params.quality} > {log:q} 2>&1"


rule plot_correspondence:
    input:
        correspondence=f"{R}/mining/correspondence.h5",
        index=INDEX,
    output:
        report(
            f"{R}/figures/correspondence.png",
            caption="../report/correspondence.rst",
            category="Correspondence mining",
        ),
    params:
        num=CORR["figure_pairs"],
    benchmark:
        f"{R}/benchmarks/plot_correspondence.tsv",
    log:
        f"{R}/logs/plot_correspondence.log",
    shell:
        "orl plot-correspondence --correspondence {input.correspondence:q} --index {input.index:q}"
        " --out {output:q} --num {params.num} --seed 0 > {log:q} 2>&1"
