import json

# Data: the built-in demo scenes (when dataset.kind is demo) and the image index every stage indexes.


rule demo_data:
    output:
        directory(DEMO_DIR),
    params:
        seed=config["demo"]["seed"],
        num_train=config["demo"]["num_train"],
        num_val=config["demo"]["num_val"],
        image_size=config["demo"]["image_size"],
        min_objects=config["demo"]["min_objects"],
        max_objects=config["demo"]["max_objects"],
        world=optional_flags("--world", [f"{k}={json.dumps(v)}" for k, v in sorted(config["demo"]["world"].items())]),
    benchmark:
        f"{R}/benchmarks/demo_data.tsv",
    log:
        f"{R}/logs/demo_data.log",
    shell:
        "orl demo-data --out {output:q} --seed {params.seed} --num-train {params.num_train}"
        " --num-val {params.num_val} --image-size {params.image_size}"
        " --min-objects {params.min_objects} --max-objects {params.max_objects} {params.world} > {log:q} 2>&1"


rule index_images:
    input:
        dataset_inputs,
    output:
        INDEX,
    params:
        images=train_images(),
        annotations=optional_flag("--annotations", train_annotations()),
        listing=dataset_listing,  # not used by the command: it makes Snakemake rerun when an image changes
    threads: config["index"]["threads"]
    benchmark:
        f"{R}/benchmarks/index_images.tsv",
    log:
        f"{R}/logs/index_images.log",
    shell:
        "orl index --images {params.images:q} {params.annotations} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1; grep -h 'warning:' {log:q} >&2 || true"  # left-out images on the console
