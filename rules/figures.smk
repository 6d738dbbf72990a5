# Figures: each depends on small tables only, so any one rebuilds in seconds.
# figures/all is a manifest of every figure with its sha256 and source tables.

FIGURE_TABLES = {
    "drift_over_rounds": drift_table_files("none"),
    "example_dialog": rules.example_dialog.output,
    "attention_decay": [
        rules.attention.output.per_token,
        rules.attention.output.per_layer_round,
    ],
    "attention_vs_stability": rules.attention_vs_stability.output,
    "mitigation_over_rounds": [
        rules.tradeoff.output.by_round,
        rules.tradeoff.output.tradeoff,
    ],
    "tradeoff_stability_mmlu": [rules.tradeoff.output.tradeoff],
    "theory_attention_decay": [
        rules.attention.output.theory_curve,
        rules.attention.output.theory_fits,
        rules.attention.output.theory_synthetic,
    ],
}
FIGURE_TABLES = {k: [str(p) for p in v] for k, v in FIGURE_TABLES.items()}

# Attention and MMLU need the model's internals on local weights: a study whose backend runs
# none (an API model) gets the dialog figures only.
if not BACKENDS[config["backend"]].local_weights:
    FIGURE_TABLES = {
        k: FIGURE_TABLES[k] for k in ("drift_over_rounds", "example_dialog")
    }

# The drift tables of every control setting (e.g. the length-only control), built with
# figures/all so the drift figure can be read beside them.
CONTROL_TABLES = [f for s in CONTROLS for f in drift_table_files(s)]


localrules:
    figure,
    compare,
    all_figures,
    all,


rule figure:
    input:
        lambda wildcards: FIGURE_TABLES[wildcards.name],
    output:
        pdf="figures/{name}.pdf",
        png=report(
            "figures/{name}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        f"{LOGS}/figures/{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{name}}.tsv"
    wildcard_constraints:
        name="|".join(FIGURE_TABLES),
    conda:
        "../envs/analysis.yaml"
    shell:
        "personadrift figure {wildcards.name:q} --tables {input:q} --out {output.pdf:q} {output.png:q}"
        " > {log:q} 2>&1"


rule all_figures:
    input:
        figures=expand("figures/{name}.{ext}", name=FIGURE_TABLES, ext=("pdf", "png")),
        browser=f"{RESULTS}/browser",
        controls=CONTROL_TABLES,
        # the study's outputs manifest (rules/verify.smk), which a rerun is verified against
        outputs=f"{RESULTS}/manifest.json",
    output:
        "figures/all",
    log:
        f"{LOGS}/figures/all.log",
    benchmark:
        f"{BENCHMARKS}/figures/all.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        tables=json.dumps(
            {
                f"figures/{name}.{ext}": tables
                for name, tables in FIGURE_TABLES.items()
                for ext in ("pdf", "png")
            }
        ),
    shell:
        "personadrift manifest --out {output:q} --figure-tables {params.tables:q} {input.figures:q} > {log:q} 2>&1"


# Several studies side by side (compare.studies), the paper's two-model layout.
rule compare:
    input:
        comparison_tables,
    output:
        pdf="figures/comparison.pdf",
        png="figures/comparison.png",
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
