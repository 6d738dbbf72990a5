# The transcript and judge browser: a static page (no server) to read any dialog behind a
# number, with every probe sample's score and a judge audit per persona. Open
# results/<study>/browser/index.html, or the "Dialogs" entry of `snakemake --report report.zip`.


localrules:
    browser,


rule browser:
    input:
        transcripts=[d for s in SETTINGS for d in transcripts(s)],
        scores=expand(rules.score.output[0], setting=SETTINGS),
        pool=rules.select_personas.output.pool,
        calibration=rules.select_personas.output.summary,
    output:
        report(
            directory(f"{RESULTS}/browser"),
            htmlindex="index.html",
            caption="../report/browser.rst",
            category="Dialogs",
        ),
    log:
        f"{LOGS}/browser.log",
    benchmark:
        f"{BENCHMARKS}/browser.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=config_provider("study", "model.name", "selfchat"),
    shell:
        "personadrift browser --params {params.config_json:q} --pool {input.pool:q}"
        " --calibration {input.calibration:q} --scores {input.scores:q} --out {output:q}"
        " {input.transcripts:q} > {log:q} 2>&1"
