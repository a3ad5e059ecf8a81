# Figures and the run summary: attention maps (random init, BYOL, ORL and the baselines), training curves per method.

FIG = config["figures"]
ATTENTION_METHODS = PRETRAIN_METHODS + ["orl"]
# Random init comes first: on the demo its maps already follow the objects, so a method's maps mean little alone.
RANDOM_BACKBONE = f"{R}/export/random/backbone.pth"


def attention_images():
    """The images whose attention maps are drawn: configured, else the demo's val split, else the index."""
    if FIG["attention_images"]:
        return FIG["attention_images"]
    return f"{DEMO_DIR}/val" if DATASET["kind"] == "demo" else INDEX


rule plot_attention:
    input:
        models=expand(f"{R}/pretrain/{{method}}/model.pt", method=ATTENTION_METHODS),
        random=RANDOM_BACKBONE,
        images=DEMO_DIR if DATASET["kind"] == "demo" else INDEX,
    output:
        report(f"{R}/figures/attention.png", caption="../report/attention.rst", category="Figures"),
    params:
        models=quoted(f"random={RANDOM_BACKBONE}", *(f"{m}={R}/pretrain/{m}/model.pt" for m in ATTENTION_METHODS)),
        images=attention_images(),
        num=FIG["attention_num"],
        size=FIG["attention_size"],
    threads: 1
    benchmark:
        f"{R}/benchmarks/plot_attention.tsv",
    log:
        f"{R}/logs/plot_attention.log",
    shell:
        "orl plot-attention --models {params.models} --images {params.images:q} --num {params.num}"
        " --size {params.size} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule plot_curves:
    input:
        f"{R}/pretrain/{{method}}/model.pt",
    output:
        report(
            f"{R}/figures/curves_{{method}}.png",
            caption="../report/curves.rst",
            category="Figures",
            subcategory="Training curves",
        ),
    params:
        # metrics.csv is written beside model.pt; it is not a declared output of the training rule, because
        # Snakemake would delete it (with the checkpoints) before a resumed run.
        metrics=lambda wc: f"{R}/pretrain/{wc.method}/metrics.csv",
    benchmark:
        f"{R}/benchmarks/plot_curves_{{method}}.tsv",
    log:
        f"{R}/logs/plot_curves_{{method}}.log",
    shell:
        "orl plot-curves --metrics {params.metrics:q} --title {wildcards.method} --out {output:q} > {log:q} 2>&1"


FIGURES = [f"{R}/figures/attention.png"] + expand(f"{R}/figures/curves_{{method}}.png", method=ATTENTION_METHODS)


# The report shows HTML inline but offers CSV and JSON only as downloads: the results table and the two mining
# quality files are rendered as self-contained HTML pages for it.
RESULTS_PAGE = f"{R}/bench/summary.html"
QUALITY_PAGES = [f"{R}/mining/proposals_quality.html"] + ([f"{R}/mining/pair_quality.html"] if HAS_ANNOTATIONS else [])
REPORT_PAGES = [RESULTS_PAGE] + QUALITY_PAGES


rule results_page:
    input:
        f"{R}/bench/summary.csv",
    output:
        report(RESULTS_PAGE, caption="../report/results_table.rst", category="Results"),
    benchmark:
        f"{R}/benchmarks/results_page.tsv",
    log:
        f"{R}/logs/results_page.log",
    shell:
        "orl report-tables --kind results --input {input:q} --out {output:q} > {log:q} 2>&1"


rule proposals_quality_page:
    input:
        PROPOSALS_QUALITY,
    output:
        report(
            f"{R}/mining/proposals_quality.html",
            caption="../report/proposals_quality.rst",
            category="Correspondence mining",
        ),
    benchmark:
        f"{R}/benchmarks/proposals_quality_page.tsv",
    log:
        f"{R}/logs/proposals_quality_page.log",
    shell:
        "orl report-tables --kind proposals --input {input:q} --out {output:q} > {log:q} 2>&1"


rule pair_quality_page:
    input:
        PAIR_QUALITY,
    output:
        report(f"{R}/mining/pair_quality.html", caption="../report/pair_quality.rst", category="Correspondence mining"),
    benchmark:
        f"{R}/benchmarks/pair_quality_page.tsv",
    log:
        f"{R}/logs/pair_quality_page.log",
    shell:
        "orl report-tables --kind pairs --input {input:q} --out {output:q} > {log:q} 2>&1"


rule run_summary:
    input:
        FIGURES,
        REPORT_PAGES,
        f"{R}/figures/correspondence.png",
        f"{R}/bench/summary.csv",
        PROPOSALS_OUT,
        CORRESPONDENCE_OUT,
    output:
        f"{R}/summary.txt",
    params:
        results=R,
    shell:
        "orl run-summary --results {params.results:q} --out {output:q}"
