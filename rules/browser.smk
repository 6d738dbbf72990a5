# The transcript and judge browser: a static page (no server) to read any dialog behind a
# number, with every probe sample's score and a judge audit per persona. Open
# results/<study>/browser/index.html, or the "Dialogs" entry of `snakemake --report report.zip`.


localrules:
    browser,


rule browser:
    input:
        transcripts=[d for s in SETTINGS for d in transcripts(s)],
        scores=expand(f"{R}/scores/{{setting}}.csv", setting=SETTINGS),
        pool=f"{R}/personas.json",
        calibration=f"{R}/tables/calibration_by_persona.csv",
    output:
        report(
            directory(f"{R}/browser"),
            htmlindex="index.html",
            caption="../report/browser.rst",
            category="Dialogs",
        ),
    log:
        f"{LOGS}/browser.log",
    conda:
        "../envs/personadrift.yaml"
    params:
        cfg=stage_params("study", "model", "selfchat"),
    shell:
        "personadrift browser --params {params.cfg:q} --pool {input.pool}"
        " --calibration {input.calibration} --scores {input.scores} --out {output}"
        " {input.transcripts} > {log} 2>&1"
