"""`t2i serve`: the lab as a local image server, a page for people and an HTTP API for programs.

    app.py         the FastAPI app: the page, /api (ours), /docs, errors as one line of JSON
    a1111.py       AUTOMATIC1111's /sdapi/v1 endpoints, translated onto the same jobs
    job_request.py a request checked whole (limits, sampler, sizes, uploads) into a job's settings
    store.py       jobs in SQLite and their PNGs on disk, kept across restarts and kills
    worker.py      the one thread that runs jobs in order, with progress, previews and cancel
    events.py      the worker's events to the server-sent-event streams
    shelf.py       the models offered by id, loaded on first use within a memory budget
    extra_networks.py  LoRAs named in prompts as <lora:name:scale>, embeddings added to the models they fit
    limits.py      what one request may ask
    static/        the page (no external requests: it works offline)

Needs the `serve` extra (FastAPI, uvicorn): `pip install "t2i[serve]"`.
"""
