# Scores (one row per probe answer) and the small tables figures are drawn from.


localrules:
    score,
    drift_tables,
    example_dialog,


rule score:
    input:
        lambda wildcards: transcripts(wildcards.setting),
    output:
        f"{RESULTS}/scores/{{setting}}.csv",
    log:
        f"{LOGS}/score/{{setting}}.log",
    benchmark:
        f"{BENCHMARKS}/score/{{setting}}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=config_provider("scoring"),
    shell:
        "personadrift score --params {params.config_json:q} --out {output:q} {input:q} > {log:q} 2>&1"


rule drift_tables:
    input:
        # the baseline's tables also hold the controls, so the drift figure shows them side by side
        scores=lambda wildcards: expand(
            rules.score.output[0],
            setting=[wildcards.setting]
            + (CONTROLS if wildcards.setting == "none" else []),
        ),
        pool=rules.select_personas.output.pool,
    output:
        by_round=f"{RESULTS}/tables/{{setting}}/by_round.csv",
        change=f"{RESULTS}/tables/{{setting}}/change.csv",
        judge_errors=f"{RESULTS}/tables/{{setting}}/judge_errors.csv",
        study=f"{RESULTS}/tables/{{setting}}/study.json",
    log:
        f"{LOGS}/tables/{{setting}}.log",
    benchmark:
        f"{BENCHMARKS}/tables/{{setting}}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=config_provider(
            "scoring",
            "seed",
            "study",
            "model.name",
            "selfchat.runs",
            "selfchat.user_system_prompt",
        ),
    shell:
        "personadrift tables --params {params.config_json:q} --pool {input.pool:q}"
        " --by-round {output.by_round:q} --change {output.change:q}"
        " --judge-errors {output.judge_errors:q} --study {output.study:q}"
        " {input.scores:q} > {log:q} 2>&1"


rule example_dialog:
    input:
        scores=expand(rules.score.output[0], setting="none"),
        transcripts=transcripts("none"),
    output:
        f"{RESULTS}/tables/example_dialog.json",
    log:
        f"{LOGS}/tables/example_dialog.log",
    benchmark:
        f"{BENCHMARKS}/tables/example_dialog.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=config_provider("model.name", "report"),
    shell:
        "personadrift example-dialog --params {params.config_json:q} --scores {input.scores:q}"
        " --out {output:q} {input.transcripts:q} > {log:q} 2>&1"
