# Figures: each depends on small tables only, so any one rebuilds in seconds. Each study's
# figures land in figures/<study>/ (FIGURES), so studies never overwrite each other's;
# figures/<study>/all is a manifest of every figure with its sha256 and source tables, and
# figures/all is that manifest's copy for the configured study (the default target).


# Each figure's tables, in its function's argument order, from its one declaration
# (src/personadrift/figures/catalog.py): a study whose backend runs no local weights (an API
# model) gets the dialog figures only (attention and MMLU need the model's internals).
FIGURE_TABLES = {
    fig.name: figure_tables(fig)
    for fig in study_figures(
        internals=BACKENDS[config["backend"]].local_weights, config=config
    )
}
# ... and those a config switch leaves out of figures/all (built when asked for)
BUILDABLE_FIGURE_TABLES = {
    fig.name: figure_tables(fig)
    for fig in study_figures(
        internals=BACKENDS[config["backend"]].local_weights, switched=True
    )
}

# The drift tables of every control setting (e.g. the length-only control), built with
# figures/all so the drift figure can be read beside them.
CONTROL_TABLES = [f for s in CONTROLS for f in drift_table_files(s)]


localrules:
    figure,
    compare,
    all_figures,
    configured_study_figures,
    all,


rule figure:
    input:
        lambda wildcards: BUILDABLE_FIGURE_TABLES[wildcards.name],
    output:
        pdf=f"{FIGURES}/{{name}}.pdf",
        png=report(
            f"{FIGURES}/{{name}}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        f"{LOGS}/figures/{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{name}}.tsv"
    wildcard_constraints:
        name="|".join(BUILDABLE_FIGURE_TABLES),
    conda:
        "../envs/analysis.yaml"
    shell:
        "personadrift figure {wildcards.name:q} --tables {input:q} --out {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"


rule all_figures:
    input:
        figures=expand(
            f"{FIGURES}/{{name}}.{{ext}}", name=FIGURE_TABLES, ext=("pdf", "png")
        ),
        browser=f"{RESULTS}/browser",
        controls=CONTROL_TABLES,
        # the study's outputs manifest (rules/verify.smk), which a rerun is verified against
        outputs=f"{RESULTS}/manifest.json",
    output:
        f"{FIGURES}/all",
    log:
        f"{LOGS}/figures/all.log",
    benchmark:
        f"{BENCHMARKS}/figures/all.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        tables=json.dumps(
            {
                f"{FIGURES}/{name}.{ext}": tables
                for name, tables in FIGURE_TABLES.items()
                for ext in ("pdf", "png")
            }
        ),
    shell:
        "personadrift manifest --out {output:q} --figure-tables {params.tables:q} {input.figures:q} > {log:q} 2>&1"


# `snakemake figures/all`: every figure of the configured study. A copy of its manifest, rebuilt
# whenever the configured study changes (params), so running another study rewrites this copy
# only, never the first study's figures/<study>/.
rule configured_study_figures:
    input:
        rules.all_figures.output[0],
    output:
        "figures/all",
    log:
        f"{LOGS}/figures/configured_study.log",
    conda:
        "../envs/analysis.yaml"
    params:
        study=STUDY,
    shell:
        "cp {input:q} {output:q} > {log:q} 2>&1"


# Several studies side by side (compare.studies), the paper's two-model layout.
rule compare:
    input:
        comparison_tables,
    output:
        pdf=f"{FIGURES}/comparison.pdf",
        png=report(
            f"{FIGURES}/comparison.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "comparison"},
        ),
    log:
        f"{LOGS}/figures/comparison.log",
    benchmark:
        f"{BENCHMARKS}/figures/comparison.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        studies=config["compare"]["studies"],
        setting=config["compare"]["setting"],
    shell:
        "personadrift compare {params.studies:q} --setting {params.setting:q}"
        " --out {output.pdf:q} {output.png:q} > {log:q} 2>&1"
