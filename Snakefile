# ORL as a Snakemake workflow. This file and workflow/rules/*.smk only wire artifacts together;
# every rule runs one `orl <stage>` command (src/orl/cli.py).
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


rule all:
    input:
        INDEX,
    default_target: True
