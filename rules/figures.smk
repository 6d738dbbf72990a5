# Figures: each depends on small tables only, so any one rebuilds in seconds.
# figures/all is a manifest of every figure with its sha256 and source tables.

FIGURE_TABLES = {
    "drift_over_rounds": [
        f"{R}/tables/none/by_round.csv",
        f"{R}/tables/none/change.csv",
        f"{R}/tables/none/study.json",
    ],
    "example_dialog": [f"{R}/tables/example_dialog.json"],
    "attention_decay": [f"{ATT}/per_token.csv", f"{ATT}/per_layer_round.csv"],
    "attention_vs_stability": [
        f"{R}/tables/attention_vs_stability.csv",
        f"{R}/tables/attention_vs_stability.json",
    ],
    "mitigation_over_rounds": [
        f"{R}/tables/mitigation_by_round.csv",
        f"{R}/tables/tradeoff.csv",
    ],
    "tradeoff_stability_mmlu": [f"{R}/tables/tradeoff.csv"],
    "theory_attention_decay": [
        f"{ATT}/theory_curve.csv",
        f"{ATT}/theory_fits.csv",
        f"{ATT}/theory_synthetic.json",
    ],
}

# Attention and MMLU need the model's internals: an API model gets the dialog figures only.
if config["backend"] == "openai":
    FIGURE_TABLES = {
        k: FIGURE_TABLES[k] for k in ("drift_over_rounds", "example_dialog")
    }


localrules:
    figure,
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
    wildcard_constraints:
        name="|".join(FIGURE_TABLES),
    conda:
        "../envs/model.yaml"
    shell:
        "personadrift figure {wildcards.name} --tables {input} --out {output.pdf} {output.png}"
        " > {log} 2>&1"


rule all_figures:
    input:
        figures=expand("figures/{name}.{ext}", name=FIGURE_TABLES, ext=("pdf", "png")),
        browser=f"{R}/browser",
    output:
        "figures/all",
    log:
        f"{LOGS}/figures/all.log",
    conda:
        "../envs/model.yaml"
    params:
        tables=json.dumps(
            {
                f"figures/{name}.{ext}": tables
                for name, tables in FIGURE_TABLES.items()
                for ext in ("pdf", "png")
            }
        ),
    shell:
        "personadrift manifest --out {output} --figure-tables {params.tables:q} {input.figures} > {log} 2>&1"
