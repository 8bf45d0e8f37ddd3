"""The headless audit: sample many captions with the guard in detect mode, rank what it flags.

    python <pack>/audit --captions captions.txt --checkpoint v1-5-pruned-emaonly.safetensors --out audit_out

Runs ComfyUI's own loaders and samplers in-process (no server), locally or on a Ray cluster
(`--ray`), writes a Parquet table, thumbnails, heatmaps and a self-contained HTML report, and
resumes where it stopped. `python <pack>/audit --help` lists the options.
"""
