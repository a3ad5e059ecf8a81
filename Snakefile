# ORL as a Snakemake workflow. This file and workflow/rules/*.smk only wire artifacts together;
# every rule runs one `orl <stage>` command (src/orl/cli.py).
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


# config.yaml (the demo) applies only when no --configfile is given: Snakemake deep-merges a --configfile into the
# workflow's configfile, which would leak demo sizes into a paper-scale run.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError:
    # Snakemake's message prints the whole schema (~1,700 lines); name only what is wrong.
    from orl.config_check import config_problems

    raise WorkflowError(config_problems(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/mining.smk"
include: "workflow/rules/correspondence.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        INDEX,
        expand(f"{R}/pretrain/{{method}}/model.pt", method=PRETRAIN_METHODS),
        f"{R}/mining/knn.h5",
        PROPOSALS_OUT,
        CORRESPONDENCE_OUT,
        f"{R}/figures/correspondence.png",
        f"{R}/bench/summary.csv",
        FIGURES,
        f"{R}/summary.txt",
    default_target: True


onsuccess:
    # The run's headline numbers and where the report and the results table are.
    if os.path.exists(f"{R}/summary.txt"):
        print(open(f"{R}/summary.txt").read())
