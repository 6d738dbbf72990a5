# Attention decay: a teacher-forced pass over stored baseline conversations with the
# streaming recorder, then small tables for the three attention figures.

ATT = f"{R}/attention"


rule attention:
    input:
        model=MODEL,
        transcripts=transcripts("none"),
    output:
        tokens=f"{ATT}/tokens.csv.gz",
        per_token=f"{ATT}/per_token.csv",
        per_layer_round=f"{ATT}/per_layer_round.csv",
        per_round=f"{ATT}/per_round.csv",
        theory_curve=f"{ATT}/theory_curve.csv",
        theory_fits=f"{ATT}/theory_fits.csv",
        theory_synthetic=f"{ATT}/theory_synthetic.json",
    log:
        f"{LOGS}/attention.log",
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        cfg=stage_params("model", "attention", "seed"),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        out=lambda wildcards, output: os.path.dirname(output.tokens),
    shell:
        "personadrift attention --params {params.cfg:q} --model-dir {params.model_dir}"
        " --threads {threads} --out {params.out} {input.transcripts} > {log} 2>&1"


localrules:
    attention_vs_stability,


rule attention_vs_stability:
    input:
        attention=f"{ATT}/per_round.csv",
        scores=f"{R}/scores/none.csv",
    output:
        joined=f"{R}/tables/attention_vs_stability.csv",
        correlation=f"{R}/tables/attention_vs_stability.json",
    log:
        f"{LOGS}/tables/attention_vs_stability.log",
    conda:
        "../envs/model.yaml"
    params:
        cfg=stage_params("scoring", "seed", "model"),
    shell:
        "personadrift attention-vs-stability --params {params.cfg:q} --attention {input.attention}"
        " --scores {input.scores} --out {output.joined} --correlation {output.correlation}"
        " > {log} 2>&1"
