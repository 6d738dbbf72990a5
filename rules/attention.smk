# Attention decay: a teacher-forced pass over stored baseline conversations with the
# streaming recorder, then small tables for the three attention figures.

ATTENTION_RESULTS = f"{RESULTS}/attention"


rule attention:
    input:
        model=MODEL,
        transcripts=transcripts("none"),
    output:
        tokens=f"{ATTENTION_RESULTS}/tokens.csv.gz",
        per_token=f"{ATTENTION_RESULTS}/per_token.csv",
        per_layer_round=f"{ATTENTION_RESULTS}/per_layer_round.csv",
        per_round=f"{ATTENTION_RESULTS}/per_round.csv",
        theory_curve=f"{ATTENTION_RESULTS}/theory_curve.csv",
        theory_fits=f"{ATTENTION_RESULTS}/theory_fits.csv",
        theory_synthetic=f"{ATTENTION_RESULTS}/theory_synthetic.json",
    log:
        f"{LOGS}/attention.log",
    benchmark:
        f"{BENCHMARKS}/attention.tsv"
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        config_json=config_provider("model", "attention", "seed", "scoring.confidence"),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        out=lambda wildcards, output: os.path.dirname(output.tokens),
    shell:
        "personadrift attention --params {params.config_json:q} --model-dir {params.model_dir:q}"
        " --threads {threads} --out {params.out:q}"
        " --attempt {resources.attempt} --no-retry-note {log:q}.no-retry --require-gpus {resources.required_gpus}"
        " --gpu-memory-gb {resources.gpu_memory_gb} --mem-mb {resources.mem_mb} {input.transcripts:q} > {log:q} 2>&1"


localrules:
    attention_vs_stability,


rule attention_vs_stability:
    input:
        attention=rules.attention.output.per_round,
        scores=expand(rules.score.output[0], setting="none"),
    output:
        joined=f"{RESULTS}/tables/attention_vs_stability.csv",
        correlation=f"{RESULTS}/tables/attention_vs_stability.json",
    log:
        f"{LOGS}/tables/attention_vs_stability.log",
    benchmark:
        f"{BENCHMARKS}/tables/attention_vs_stability.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=config_provider("scoring", "seed", "model.name"),
    shell:
        "personadrift attention-vs-stability --params {params.config_json:q} --attention {input.attention:q}"
        " --scores {input.scores:q} --out {output.joined:q} --correlation {output.correlation:q}"
        " > {log:q} 2>&1"
