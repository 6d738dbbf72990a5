# personadrift: persona drift in language-model dialogs (Li et al. 2024), end to end.
#
#   snakemake figures/all --cores 2                    # embedded default model, on a laptop
#   snakemake figures/all --profile slurm              # on a SLURM GPU cluster
#   snakemake figures/all --configfile configs/paper.yaml --profile slurm
#
# Data flows one way: model -> transcripts -> scores -> tables -> figures.
# One rule file per stage; all logic lives in the Python package src/personadrift/.

from snakemake.utils import min_version

min_version("9.0")


report: "report/workflow.rst"


# The default target (also what `snakemake --report report.zip` reports on).
rule all:
    default_target: True
    input:
        "figures/all",


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/personas.smk"
include: "rules/vectors.smk"
include: "rules/selfchat.smk"
include: "rules/score.smk"
include: "rules/attention.smk"
include: "rules/signals.smk"
include: "rules/mitigation.smk"
include: "rules/figures.smk"
include: "rules/verify.smk"
include: "rules/browser.smk"
include: "rules/inspect.smk"
