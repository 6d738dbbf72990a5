# Scores (one row per probe answer) and the small tables figures are drawn from.


localrules:
    score,
    drift_tables,
    example_dialog,


rule score:
    input:
        lambda wildcards: transcripts(wildcards.setting),
    output:
        f"{R}/scores/{{setting}}.csv",
    log:
        f"{LOGS}/score/{{setting}}.log",
    conda:
        "../envs/model.yaml"
    params:
        cfg=stage_params("scoring"),
    shell:
        "personadrift score --params {params.cfg:q} --out {output} {input} > {log} 2>&1"


rule drift_tables:
    input:
        scores=f"{R}/scores/{{setting}}.csv",
        pool=f"{R}/personas.json",
    output:
        by_round=f"{R}/tables/{{setting}}/by_round.csv",
        change=f"{R}/tables/{{setting}}/change.csv",
        study=f"{R}/tables/{{setting}}/study.json",
    log:
        f"{LOGS}/tables/{{setting}}.log",
    conda:
        "../envs/model.yaml"
    params:
        cfg=stage_params("scoring", "study", "model", "selfchat"),
    shell:
        "personadrift tables --params {params.cfg:q} --pool {input.pool}"
        " --by-round {output.by_round} --change {output.change} --study {output.study}"
        " {input.scores} > {log} 2>&1"


rule example_dialog:
    input:
        scores=f"{R}/scores/none.csv",
        transcripts=transcripts("none"),
    output:
        f"{R}/tables/example_dialog.json",
    log:
        f"{LOGS}/tables/example_dialog.log",
    conda:
        "../envs/model.yaml"
    params:
        cfg=stage_params("model", "report"),
    shell:
        "personadrift example-dialog --params {params.cfg:q} --scores {input.scores}"
        " --out {output} {input.transcripts} > {log} 2>&1"
