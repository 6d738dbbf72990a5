# The study as Inspect evaluation logs (inspect_ai's own format): one log per setting, one
# sample per conversation, for `inspect view --log-dir results/<study>/inspect` and
# inspect_ai.analysis. Not part of figures/all: build it with
# `snakemake results/<study>/inspect`.


localrules:
    inspect_logs,


rule inspect_logs:
    input:
        transcripts=[d for s in SETTINGS for d in transcripts(s)],
        scores=expand(rules.score.output[0], setting=SETTINGS),
    output:
        directory(f"{RESULTS}/inspect"),
    log:
        f"{LOGS}/inspect.log",
    benchmark:
        f"{BENCHMARKS}/inspect.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=config_provider("study", "model.name"),
    shell:
        "personadrift export-inspect --params {params.config_json:q} --scores {input.scores:q}"
        " --out {output:q} {input.transcripts:q} > {log:q} 2>&1"
