"""`t2i serve`'s HTTP API with the shipped emoji model (a few steps a job): our /api, AUTOMATIC1111's
/sdapi/v1, server-sent events in order, cancelling, the limits as 4xx JSON naming them, the token,
and jobs that outlive the server's process."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import t2i

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from t2i import Pipeline  # noqa: E402
from t2i.serve.app import ServerSettings, create_app  # noqa: E402
from t2i.serve.limits import Limits  # noqa: E402
from t2i.serve.store import JobStore  # noqa: E402

from test_bad_input import tiny_png  # noqa: E402

FAST = {"prompt": "red heart", "steps": 3, "seed": 7}


def app_for(tmp_path, token=None, **limits):
    return create_app(ServerSettings(tmp_path / "data", ("emoji", "shapes"), token=token, limits=Limits(**limits)))


@pytest.fixture
def client(tmp_path):
    """A server with its worker running."""
    with TestClient(app_for(tmp_path)) as client:
        yield client


@pytest.fixture
def paused(tmp_path):
    """A server whose worker has not started: jobs stay queued until the test starts it."""
    app = app_for(tmp_path, max_queue=3)
    client = TestClient(app)  # outside `with`: no lifespan, so no worker
    yield client, app.state.server.worker
    app.state.server.worker.stop()


def finished(client, job_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def events(client, job_id):
    """The (event, data) pairs of a job's server-sent-event stream, to its end."""
    out, event = [], None
    with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[len("data: "):])))
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(image: Image.Image, pnginfo=None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return buffer.getvalue()


def test_a_job_makes_the_images_the_library_makes_and_keeps_both_metadata_chunks(client):
    job = client.post("/api/jobs", json={**FAST, "num_images": 2}).json()
    assert job["state"] in ("queued", "running") and job["settings"]["seed"] == 7
    job = finished(client, job["id"])
    assert job["state"] == "done", job["error"]
    assert [image["seed"] for image in job["images"]] == [7, 8]
    served = [Image.open(io.BytesIO(client.get(image["url"]).content)) for image in job["images"]]
    assert served[0].text["parameters"].startswith("red heart\nSteps: 3, Sampler: DPM++ 2M")
    assert json.loads(served[0].text["t2i"])["seed"] == 7
    direct = Pipeline.load("emoji")("red heart", steps=3, seed=7, num_images=2, progress=False)
    for ours, theirs in zip(served, direct):
        np.testing.assert_array_equal(np.asarray(ours.convert("RGB")), np.asarray(theirs))


def test_a_random_seed_is_drawn_at_the_request_and_shown(client):
    seeds = {client.post("/api/jobs", json={"prompt": "cat", "steps": 1, "seed": seed}).json()["settings"]["seed"]
             for seed in (None, -1, None)}
    assert all(isinstance(seed, int) and seed >= 0 for seed in seeds) and len(seeds) == 3


def test_events_arrive_in_order_queued_started_progress_done(paused):
    client, worker = paused
    first = client.post("/api/jobs", json=FAST).json()
    second = client.post("/api/jobs", json={**FAST, "steps": 4}).json()
    assert (first["position"], second["position"]) == (1, 2)
    threading.Timer(0.5, worker.start).start()  # after the stream below has subscribed
    stream = events(client, second["id"])
    names = [name for name, _ in stream]
    assert names[:2] == ["queued", "started"] and names[-1] == "done"
    assert stream[0][1] == {"position": 2}
    steps = [data["step"] for name, data in stream if name == "progress"]
    assert steps == [0, 1, 2, 3] and set(names[2:-1]) == {"progress"}
    assert stream[-1][1]["state"] == "done" and len(stream[-1][1]["images"]) == 1
    previews = [data["preview"] for name, data in stream if "preview" in data]
    assert previews and all(p.startswith("data:image/png;base64,") for p in previews)


def test_a_queued_job_cancelled_never_runs_and_the_queue_moves_up(paused):
    client, worker = paused
    jobs = [client.post("/api/jobs", json=FAST).json() for _ in range(3)]
    cancelled = client.delete(f"/api/jobs/{jobs[1]['id']}").json()
    assert cancelled["state"] == "cancelled"
    assert [job["id"] for job in client.get("/api/queue").json()["jobs"]] == [jobs[0]["id"], jobs[2]["id"]]
    assert client.get(f"/api/jobs/{jobs[2]['id']}").json()["position"] == 2
    assert events(client, jobs[1]["id"])[-1][0] == "cancelled"
    worker.start()
    assert finished(client, jobs[2]["id"])["state"] == "done"
    assert client.get(f"/api/jobs/{jobs[1]['id']}").json()["images"] == []
    assert client.delete(f"/api/jobs/{jobs[2]['id']}").status_code == 409


def test_a_running_job_stops_at_the_next_step_when_cancelled(client):
    job = client.post("/api/jobs", json={**FAST, "steps": 150}).json()
    deadline = time.time() + 60
    while (client.get(f"/api/jobs/{job['id']}").json()["progress"] or {}).get("step", 0) < 2:
        assert time.time() < deadline
        time.sleep(0.02)
    assert client.delete(f"/api/jobs/{job['id']}").json()["cancel_requested"] is True
    ended = finished(client, job["id"], timeout=30)
    assert ended["state"] == "cancelled" and ended["images"] == []


@pytest.mark.parametrize("body, limit, status", [
    ({"steps": 151}, "max_steps", 422),
    ({"num_images": 17}, "max_images", 422),
    ({"prompt": "x" * 2001}, "max_prompt_chars", 422),
    ({"negative_prompt": "x" * 2001}, "max_prompt_chars", 422),
    ({"width": 2048, "height": 1024}, "max_pixels", 422),
    ({"image": b64(tiny_png(5000, 5000))}, "max_upload_pixels", 413),
    ({"image": "A" * (17 * 2**20 * 4 // 3)}, "max_upload_bytes", 413),
])
def test_each_limit_is_a_4xx_json_error_naming_it(client, body, limit, status):
    response = client.post("/api/jobs", json={**FAST, **body})
    assert response.status_code == status and response.json()["limit"] == limit
    assert "\n" not in response.json()["detail"]


def test_a_full_queue_is_429_naming_max_queue(paused):
    client, _ = paused
    for _ in range(3):
        assert client.post("/api/jobs", json=FAST).status_code == 202
    response = client.post("/api/jobs", json=FAST)
    assert response.status_code == 429 and response.json()["limit"] == "max_queue"


@pytest.mark.parametrize("body, match", [
    ({"model": "/etc/passwd"}, "no model '/etc/passwd' on this server"),
    ({"sampler": "nope"}, "unknown sampler 'nope'"),
    ({"spacing": "nope"}, "unknown spacing"),
    ({"width": 100}, "divisible by 16"),
    ({"cfg": float("1e9")}, "guidance scale"),
    ({"steps": 0}, "steps"),
    ({"strength": 0.5}, "strength is how far to noise an image"),
    ({"image": b64(b"not a png")}, "cannot read image"),
    ({"image": "@@@"}, "cannot read image"),
    ({"mask": b64(png(Image.new("L", (8, 8))))}, "a mask needs the image"),
    ({"steps": "many"}, "steps: Input should be a valid integer"),
    ({"stepz": 3}, "stepz: Extra inputs are not permitted"),
    ({"model": "shapes", "width": 64, "seed": 2**63}, "seed"),
    ({"eta": 0}, "sampler 'dpmpp_2m', model 'emoji''s default, takes no eta: leave eta out, or choose"),
    ({"sampler": "euler", "eta": 0.5}, "sampler 'euler' takes no eta"),
    ({"sampler": "ddim", "eta": -1}, "eta must be a finite number from 0"),
])
def test_bad_requests_are_one_line_422s_before_anything_is_queued(client, body, match):
    response = client.post("/api/jobs", json={**FAST, **body})
    assert response.status_code == 422 and match in response.json()["detail"], response.json()
    assert client.get("/api/jobs").json()["total"] == 0


@pytest.mark.parametrize("path, body", [
    ("/api/jobs", '{"prompt": "red heart", "steps": 1, "sampler": "ddim", "eta": 1e999}'),
    ("/api/jobs", '{"prompt": "red heart", "steps": 1, "sampler": "ddim", "eta": NaN}'),
    ("/sdapi/v1/txt2img", '{"prompt": "red heart", "steps": 1, "sampler_name": "DDIM", "eta": -Infinity}'),
    ("/sdapi/v1/txt2img", '{"prompt": "red heart", "steps": 1, "override_settings": {"eta_ddim": [NaN]}}'),
])
def test_numbers_past_what_json_can_answer_are_refused_at_the_request(client, path, body):
    # Python's JSON reads 1e999 and NaN, but no answer that showed them back could be written
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "finite number" in response.json()["detail"], response.json()
    assert client.get("/api/jobs").json()["total"] == 0


def test_img2img_and_inpainting_keep_the_size_and_the_unmasked_pixels(client):
    source = Image.new("RGB", (64, 64), (250, 250, 250))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpaint = finished(client, client.post("/api/jobs", json={**FAST, "image": b64(png(source)),
                                                               "mask": b64(png(mask))}).json()["id"])
    edit = finished(client, client.post("/api/jobs", json={**FAST, "image": b64(png(source)),
                                                            "strength": 0.5}).json()["id"])
    assert (inpaint["settings"]["kind"], edit["settings"]["kind"]) == ("inpaint", "img2img")
    out = np.asarray(Image.open(io.BytesIO(client.get(inpaint["images"][0]["url"]).content)).convert("RGB"))
    assert out.shape == (64, 64, 3) and (out[:8] == 250).all()  # the kept border is the input's own pixels
    assert edit["images"][0]["parameters"]["strength"] == 0.5


def test_history_is_newest_first_and_paged(client):
    ids = [client.post("/api/jobs", json={**FAST, "steps": 1}).json()["id"] for _ in range(3)]
    page = client.get("/api/jobs", params={"limit": 2}).json()
    assert page["total"] == 3 and [job["id"] for job in page["jobs"]] == ids[::-1][:2]
    assert [job["id"] for job in client.get("/api/jobs", params={"limit": 2, "offset": 2}).json()["jobs"]] == ids[:1]


def test_models_samplers_limits_and_offline_docs(client):
    models = client.get("/api/models").json()
    assert models["default"] == "emoji" and [m["id"] for m in models["models"]] == ["emoji", "shapes"]
    assert models["models"][0]["image_size"] == 64 and models["models"][0]["size_multiple"] == 16
    assert [m["clip"] for m in models["models"]] == [False, True]  # emoji reads BERT, shapes CLIP: clip skip
    menu = client.get("/api/samplers").json()["samplers"]
    assert {"Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DDIM"} <= {entry["label"] for entry in menu}
    eta = {entry["label"]: entry["eta"] for entry in menu}
    assert eta["DDIM"] and eta["Euler a"] and not eta["DPM++ 2M"] and not eta["DPM++ 2M Karras"]
    assert client.get("/api/limits").json()["max_steps"] == 150
    docs = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "https://" not in docs.replace("https://swagger.io", "")
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert "/api/jobs" in client.get("/openapi.json").json()["paths"]
    page = client.get("/").text
    assert "<html" in page.lower() and "http://" not in page and "https://" not in page


def test_a_models_distilled_students_are_listed_for_the_page(tmp_path):
    """The page tells which step counts run a model's distilled student (students/steps-N), before and after the
    model loads."""
    import shutil

    from t2i.checkpoints import shipped_models

    model = tmp_path / "fast"
    shutil.copytree(shipped_models()["shapes"], model)
    (model / "students" / "steps-4").mkdir(parents=True)
    shutil.copy(model / "config.json", model / "students" / "steps-4" / "config.json")
    with TestClient(create_app(ServerSettings(tmp_path / "data", (str(model), "shapes")))) as client:
        assert [m["students"] for m in client.get("/api/models").json()["models"]] == [[4], []]
        finished(client, client.post("/api/jobs", json={"prompt": "a red circle", "steps": 2}).json()["id"])
        listed = client.get("/api/models").json()["models"][0]
        assert listed["loaded"] and listed["students"] == [4]


def test_png_info_reads_ours_and_automatic1111s(client):
    job = finished(client, client.post("/api/jobs", json=FAST).json()["id"])
    ours = client.post("/api/png-info", json={"image": b64(client.get(job["images"][0]["url"]).content)}).json()
    assert ours["parameters"]["prompt"] == "red heart" and ours["parameters"]["seed"] == 7
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M Karras, "
                                "CFG scale: 7, Seed: 42, Size: 512x768, Model: sd15")
    theirs = client.post("/api/png-info", json={"image": b64(png(Image.new("RGB", (8, 8)), info))}).json()
    assert theirs["parameters"] == {"prompt": "a castle", "negative_prompt": "blurry", "steps": 30, "cfg": 7.0,
                                    "seed": 42, "model": "sd15", "size": [768, 512], "sampler": "dpmpp_2m",
                                    "spacing": "karras"}
    a1111 = client.post("/sdapi/v1/png-info", json={"image": b64(png(Image.new("RGB", (8, 8)), info))}).json()
    assert a1111["info"].startswith("a castle\nNegative prompt: blurry")
    assert a1111["parameters"] == {"Prompt": "a castle", "Negative prompt": "blurry", "Steps": "30",
                                   "Sampler": "DPM++ 2M Karras", "CFG scale": "7", "Seed": "42", "Size": "512x768",
                                   "Size-1": "512", "Size-2": "768", "Model": "sd15"}  # AUTOMATIC1111's keys
    newer = PngImagePlugin.PngInfo()  # AUTOMATIC1111 1.9 and later name the spacing apart
    newer.add_text("parameters", "a castle\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, Seed: 42")
    read = client.post("/api/png-info", json={"image": b64(png(Image.new("RGB", (8, 8)), newer))}).json()
    assert read["parameters"]["sampler"] == "dpmpp_2m" and read["parameters"]["spacing"] == "karras"


def test_automatic1111_txt2img_answers_with_images_parameters_and_info(client):
    body = {"prompt": "red heart", "negative_prompt": "", "steps": 3, "cfg_scale": 5, "seed": 7,
            "sampler_name": "DPM++ 2M", "batch_size": 2, "n_iter": 1, "restore_faces": False, "tiling": False}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"images", "parameters", "info"} and len(answer["images"]) == 2
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [7, 8] and info["sampler_name"] == "DPM++ 2M" and info["steps"] == 3
    assert info["infotexts"][1].startswith("red heart\nSteps: 3, Sampler: DPM++ 2M, CFG scale: 5.0, Seed: 8")
    # the library's images of the same call, a batch of 2 as the server's (another batch size may round differently)
    direct = Pipeline.load("emoji")("red heart", steps=3, seed=7, cfg=5, num_images=2, progress=False)
    for encoded, image in zip(answer["images"], direct):
        ours = Image.open(io.BytesIO(base64.b64decode(encoded)))
        np.testing.assert_array_equal(np.asarray(ours.convert("RGB")), np.asarray(image))


def test_automatic1111_keeps_a_call_only_when_it_asks_to_save_its_images(client, tmp_path):
    images = tmp_path / "data" / "images"
    answer = client.post("/sdapi/v1/txt2img", json={**FAST, "steps": 1})  # save_images: false, as there by default
    assert answer.status_code == 200 and len(answer.json()["images"]) == 1
    assert client.get("/api/jobs").json()["total"] == 0 and not any(images.glob("*"))
    source = b64(png(Image.new("RGB", (64, 64), (200, 30, 30))))
    answer = client.post("/sdapi/v1/img2img", json={**FAST, "steps": 2, "init_images": [source]})
    assert answer.status_code == 200 and client.get("/api/jobs").json()["total"] == 0
    assert not any((tmp_path / "data" / "inputs").glob("*"))  # its upload went too
    failed = client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert failed.status_code == 422 and client.get("/api/jobs").json()["total"] == 0
    answer = client.post("/sdapi/v1/txt2img", json={**FAST, "steps": 1, "save_images": True, "send_images": False})
    assert answer.status_code == 200 and answer.json()["images"] == []
    info = json.loads(answer.json()["info"])
    kept = client.get("/api/jobs").json()["jobs"]
    assert [job["state"] for job in kept] == ["done"] and kept[0]["settings"]["seed"] == info["seed"]
    assert client.get(kept[0]["images"][0]["url"]).status_code == 200


def test_the_store_removes_at_start_the_files_of_no_job(tmp_path):
    store = JobStore(tmp_path)
    job = store.add({"n": 1}, {"image": b"png"})
    store.end(job.id, "done")
    for folder in ("images", "inputs"):  # as a forget, or an add, cut short by a kill leaves them
        (tmp_path / folder / "0123456789ab").mkdir(parents=True)
        (tmp_path / folder / "0123456789ab" / "0.png").write_bytes(b"png")
    store.close()
    store = JobStore(tmp_path)
    assert not (tmp_path / "images" / "0123456789ab").exists() and not (tmp_path / "inputs" / "0123456789ab").exists()
    assert store.input_path(job.id, "image").read_bytes() == b"png"
    store.forget(job.id)
    assert store.get(job.id) is None and not (tmp_path / "inputs" / job.id).exists()
    store.close()


def test_automatic1111_sampler_names_model_override_and_unknown_sampler(client):
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "", "steps": 2, "seed": 1, "sampler_name": "Euler a",
                                                    "override_settings": {"sd_model_checkpoint": "shapes"}}).json()
    info = json.loads(answer["info"])
    assert info["sd_model_name"] == "shapes" and info["sampler_name"] == "Euler a Karras" and info["width"] == 32
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "", "steps": 2, "seed": 1,
                                                    "sampler_name": "DPM++ 2M Karras"}).json()
    assert "Sampler: DPM++ 2M Karras" in json.loads(answer["info"])["infotexts"][0]
    wrong = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "Euler z"})
    assert wrong.status_code == 422 and "Euler a" in wrong.json()["detail"]
    assert {"name": "Euler a", "aliases": ["euler_ancestral"], "options": {}} in client.get("/sdapi/v1/samplers").json()
    assert [m["title"] for m in client.get("/sdapi/v1/sd-models").json()] == ["emoji", "shapes"]


def test_automatic1111_clients_nulls_eta_file_titles_and_the_size_that_ran(client):
    # what generated clients send: every field, unset ones as null; a model as its file's title
    body = {"prompt": "red heart", "steps": 3, "seed": None, "cfg_scale": None, "width": None, "height": None,
            "sampler_name": "DDIM", "eta": 0.5, "override_settings": None}
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert "Eta: 0.5" in info["infotexts"][0] and info["seed"] >= 0
    assert (info["width"], info["height"]) == (64, 64) and info["index_of_first_image"] == 0
    for title in ("shapes.safetensors", "shapes.safetensors [6ce0161689]", "SD15/shapes.ckpt"):
        body = {"prompt": "", "steps": 2, "seed": 1, "override_settings": {"sd_model_checkpoint": title}}
        assert json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])["sd_model_name"] == "shapes"
    direct = Pipeline.load("emoji")("red heart", steps=3, seed=info["seed"], sampler="ddim", eta=0.5, progress=False)
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(direct[0]))


def test_automatic1111_null_fields_and_the_servers_clip_skip_on_a_model_without_clip(client):
    # clients set "CLIP_stop_at_last_layers" once for their SD models; emoji (MiniLM) then runs as it is
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    try:
        body = {**FAST, "prompt": None, "negative_prompt": None, "batch_size": None, "n_iter": None}
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["images"]) == 1 and json.loads(answer.json()["info"])["prompt"] == ""
        answer = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": None})
        assert answer.status_code == 422 and "init_images is empty" in answer.json()["detail"]
    finally:
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})


def test_a_wait_for_the_end_is_not_watching_so_no_previews_are_made_for_it():
    import asyncio

    from t2i.serve.events import EventHub

    async def subscribe():
        hub = EventHub()
        waiting = hub.subscribe("job", watching=False)  # an AUTOMATIC1111 call waiting for its images
        alone = hub.listening("job")
        hub.subscribe("job")  # the page's stream
        both = hub.listening("job")
        hub.unsubscribe("job", waiting)
        return alone, both

    assert asyncio.run(subscribe()) == (False, True)


def test_a_job_of_a_model_no_longer_served_fails_as_its_request_s_mistake():
    from t2i.errors import UserError
    from t2i.serve.shelf import ModelShelf

    with pytest.raises(UserError, match=r"^model 'gone' is no longer on this server: choose one of emoji$"):
        ModelShelf(["emoji"]).get("gone")


def test_automatic1111_eta_is_ignored_by_a_sampler_without_one_as_there(client):
    # its clients send their eta with any sampler; emoji's own, DPM++ 2M, has none
    answer = client.post("/sdapi/v1/txt2img", json={**FAST, "eta": 0})
    assert answer.status_code == 200, answer.text
    assert "Eta" not in json.loads(answer.json()["info"])["infotexts"][0]


@pytest.mark.parametrize("path, body, match", [
    ("/sdapi/v1/txt2img", {**FAST, "override_settings": {"sd_model_checkpoint": 5}},
     "sd_model_checkpoint must be a model's title"),
    ("/sdapi/v1/txt2img", {**FAST, "override_settings": {"CLIP_stop_at_last_layers": 2.5}},
     "CLIP_stop_at_last_layers must be a whole number from 1"),
    ("/sdapi/v1/txt2img", {**FAST, "batch_size": -2, "n_iter": -3}, "batch_size must be a whole number of at least 1"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": 5}, "sd_model_checkpoint must be a model's title"),
])
def test_automatic1111_bad_requests_are_one_line_422s_before_anything_is_queued(client, path, body, match):
    response = client.post(path, json=body)
    assert response.status_code == 422 and match in response.json()["detail"], response.json()
    assert client.get("/api/jobs").json()["total"] == 0


def test_automatic1111_answers_a_job_failed_by_its_request_with_422_and_by_a_bug_with_500(client, monkeypatch):
    # only the run finds that emoji, which has no CLIP text encoder, takes no clip skip
    wrong = client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert wrong.status_code == 422 and "has no CLIP text encoder" in wrong.json()["detail"], wrong.json()

    class Buggy:
        defaults = {"steps": 20}

        def __call__(self, *args, **kwargs):
            raise KeyError("oops")

    monkeypatch.setattr(client.app.state.server.shelf, "get", lambda model, loras=None: Buggy())
    bug = client.post("/sdapi/v1/txt2img", json=FAST)
    assert bug.status_code == 500 and bug.json()["detail"].startswith("internal error, a bug in t2i (KeyError")


def test_automatic1111_img2img_checks_the_size_asked_before_resizing_to_it(client, monkeypatch):
    def resize(image, size, *args, **kwargs):  # a resize to 65536² would allocate 12 GiB
        raise AssertionError(f"resized to {size} before the size was checked")

    monkeypatch.setattr(Image.Image, "resize", resize)
    source = b64(png(Image.new("RGB", (8, 8))))
    for width, height, match in [(65536, 65536, "width must be a whole number from 1 to 16384, got 65536"),
                                 (4096, 4096, "4096×4096: the pixels per image is 16777216, more than this server's "
                                  "max_pixels"),
                                 (-64, 64, "width must be a whole number from 1 to 16384, got -64")]:
        response = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [source], "width": width,
                                                          "height": height})
        assert response.status_code == 422 and match in response.json()["detail"], response.json()
    assert client.get("/api/jobs").json()["total"] == 0


def test_automatic1111_img2img_takes_any_size_down_to_sides_the_model_can_take(client):
    source = b64(png(Image.new("RGB", (70, 50), (200, 30, 30))))
    answer = client.post("/sdapi/v1/img2img", json={"prompt": "red heart", "steps": 2, "seed": 3,
                                                     "init_images": [source], "denoising_strength": None})
    assert answer.status_code == 200, answer.text
    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    assert image.size == (64, 48)  # emoji's sides are multiples of 16
    assert json.loads(answer.json()["info"])["denoising_strength"] == 0.75


def test_a_post_without_a_body_is_an_empty_one_as_curl_sends_it(tmp_path):
    import asyncio

    from t2i.serve.app import BodyLimit

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def send(message):
        sent.append(message)

    for headers, expected in [([], ["/sdapi/v1/interrupt"]), ([(b"transfer-encoding", b"chunked")], [])]:
        reached, sent = [], []
        scope = {"type": "http", "method": "POST", "path": "/sdapi/v1/interrupt", "headers": headers}
        asyncio.run(BodyLimit(app, 1000)(scope, None, send))
        assert reached == expected
        assert [m["status"] for m in sent if m["type"] == "http.response.start"] == ([] if expected else [411])


def test_automatic1111_img2img_resizes_to_the_size_asked_and_inverts_masks(client):
    source = b64(png(Image.new("RGB", (32, 32), (200, 30, 30))))
    mask = Image.new("L", (32, 32), 255)
    body = {"prompt": "red heart", "steps": 2, "seed": 3, "init_images": [source], "denoising_strength": 0.6,
            "width": 64, "height": 64, "mask": b64(png(mask)), "inpainting_mask_invert": 1}
    answer = client.post("/sdapi/v1/img2img", json=body).json()
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"))
    assert image.shape == (64, 64, 3)
    assert (np.abs(image.astype(int) - (200, 30, 30)) <= 1).all()  # the inverted mask keeps every pixel
    assert json.loads(answer["info"])["denoising_strength"] == 0.6


def test_automatic1111_progress_and_interrupt(client):
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    result = {}
    thread = threading.Thread(target=lambda: result.update(client.post(
        "/sdapi/v1/txt2img", json={"prompt": "red heart", "steps": 150, "seed": 1}).json()))
    thread.start()
    deadline = time.time() + 60
    while (progress := client.get("/sdapi/v1/progress").json())["state"]["sampling_step"] < 20:
        assert time.time() < deadline
        time.sleep(0.05)
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 150
    assert progress["current_image"] and Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    client.post("/sdapi/v1/interrupt")
    thread.join(60)
    # as AUTOMATIC1111 does, the call answers with the image its x̂_0 made when it stopped, marked interrupted
    assert len(result["images"]) == 1 and json.loads(result["info"])["interrupted"] is True
    image = Image.open(io.BytesIO(base64.b64decode(result["images"][0])))
    assert image.size == (64, 64) and np.asarray(image).std() > 0 and "Steps: 150" in image.info["parameters"]


def test_with_a_token_every_api_call_needs_it_but_the_page_does_not(tmp_path):
    with TestClient(app_for(tmp_path, token="s3cret")) as client:
        assert client.get("/api/models").status_code == 401
        assert client.get("/sdapi/v1/sd-models").status_code == 401
        assert client.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/api/models", params={"token": "s3cret"}).status_code == 200
        assert client.get("/").status_code == 200


def test_no_cors_unless_asked(client):
    response = client.get("/api/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("damage", ["garbage", "folder"])
def test_a_damaged_job_store_is_refused_in_one_line_and_lets_the_folder_go(tmp_path, damage):
    from t2i.errors import UserError

    if damage == "folder":
        (tmp_path / "jobs.sqlite").mkdir()
    else:
        (tmp_path / "jobs.sqlite").write_bytes(b"not a database, " * 64)
    with pytest.raises(UserError, match=r"jobs.sqlite' is not a job store this server can read .*move it aside"):
        JobStore(tmp_path)
    (tmp_path / "jobs.sqlite").rename(tmp_path / "damaged")
    JobStore(tmp_path).close()  # the folder's lock was let go: a fresh store opens


def test_a_second_server_on_the_same_data_folder_is_refused_in_one_line(tmp_path):
    from t2i.errors import UserError

    store = JobStore(tmp_path)
    with pytest.raises(UserError, match=f"is in use by another t2i serve \\(process {os.getpid()}\\)"):
        JobStore(tmp_path)
    store.close()
    JobStore(tmp_path).close()  # free again once the first has closed (or its process ended)


def test_the_worker_outlives_a_store_that_fails_and_runs_the_next_job(client, monkeypatch):
    store = client.app.state.server.store
    end, failures = store.end, []

    def failing_once(*args, **kwargs):
        if not failures:
            failures.append(args)
            raise OSError(28, "No space left on device")
        return end(*args, **kwargs)

    monkeypatch.setattr(store, "end", failing_once)
    first = client.post("/api/jobs", json=FAST).json()["id"]
    job = finished(client, client.post("/api/jobs", json=FAST).json()["id"])
    assert failures and job["state"] == "done"
    failed = client.get(f"/api/jobs/{first}").json()
    assert failed["state"] == "failed" and "could not be stored ([Errno 28] No space left on device)" in failed["error"]


def test_a_damaged_t2i_chunk_and_a_huge_history_offset_are_answered_in_one_line(client):
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("t2i", "{")
    answer = client.post("/api/png-info", json={"image": b64(png(Image.new("RGB", (8, 8)), chunk))})
    assert answer.status_code == 422 and "is not t2i's parameters" in answer.json()["detail"]
    page = client.get("/api/jobs", params={"offset": 10**20})
    assert page.status_code == 200 and page.json()["jobs"] == []


def test_the_store_puts_an_interrupted_job_back_once_then_fails_it_with_its_reason(tmp_path):
    store = JobStore(tmp_path)
    first, second = (store.add({"n": i}, {}) for i in range(2))
    assert store.take().id == first.id
    store.close()
    store = JobStore(tmp_path)  # as after a kill: the running job is queued again, first in line
    assert store.recovered == [first.id] and store.get(first.id).state == "queued"
    assert store.take().id == first.id
    store.close()
    store = JobStore(tmp_path)
    failed = store.get(first.id)
    assert failed.state == "failed" and "stopped 2 times while this job ran" in failed.error
    assert store.take().id == second.id


def test_a_store_from_before_failures_told_their_cause_still_loads(tmp_path):
    store = JobStore(tmp_path)
    old = store.add({"n": 1}, {})
    store.end(old.id, "failed", "it broke")
    store.db.execute("ALTER TABLE jobs DROP COLUMN user_error")  # as a store written before the column was
    store.close()
    store = JobStore(tmp_path)
    assert store.get(old.id).error == "it broke" and store.get(old.id).user_error is False  # the server's, as then
    new = store.add({"n": 2}, {})
    store.end(new.id, "failed", "a typo", user_error=True)
    assert store.get(new.id).user_error is True
    store.close()


def test_two_models_of_one_name_are_refused_at_start(tmp_path):
    import shutil

    from t2i.errors import UserError
    from t2i.serve.shelf import ModelShelf

    other = tmp_path / "elsewhere" / "emoji"
    shutil.copytree(Path(t2i.__file__).parent / "weights" / "shapes", other)
    with pytest.raises(UserError, match="would both be model 'emoji'"):
        ModelShelf(["emoji", str(other)])
    assert list(ModelShelf(["emoji", "emoji"]).paths) == ["emoji"]  # the same one twice is one


def test_models_load_on_first_use_and_the_least_recently_used_goes_past_the_budget():
    from t2i.serve.shelf import ModelShelf

    shelf = ModelShelf(["emoji", "shapes"], budget_bytes=1)  # room for one model at a time
    assert [model["loaded"] for model in shelf.list()] == [False, False]
    emoji = shelf.get("emoji")
    assert shelf.get("emoji") is emoji and list(shelf.loaded) == ["emoji"]
    shelf.get("shapes")
    assert list(shelf.loaded) == ["shapes"] and [model["loaded"] for model in shelf.list()] == [False, True]
    roomy = ModelShelf(["emoji", "shapes"], budget_bytes=None)
    roomy.get("emoji"), roomy.get("shapes"), roomy.get("emoji")
    assert list(roomy.loaded) == ["shapes", "emoji"]  # most recently used last


def test_a_body_past_two_uploads_is_refused_from_its_length_before_it_is_read(tmp_path):
    client = TestClient(app_for(tmp_path, max_upload_bytes=1000))
    response = client.post("/api/jobs", content=b"x" * (2**20 + 4000), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["limit"] == "max_upload_bytes"
    chunked = client.post("/api/jobs", content=iter([b"{}"]), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 411


def test_the_command_refuses_an_open_host_without_a_token_a_busy_port_and_a_missing_extra(tmp_path, monkeypatch,
                                                                                            capsys):
    import socket
    import sys

    from t2i.cli import main

    monkeypatch.delenv("T2I_TOKEN", raising=False)
    data = ["--data-dir", str(tmp_path)]
    assert main(["serve", "--host", "0.0.0.0", *data]) == 2
    assert "--host 0.0.0.0 lets other machines in: give --token" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--port", str(busy.getsockname()[1]), *data]) == 2
        assert "choose another --port" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    assert main(["serve", *data]) == 2
    assert 'pip install "t2i[serve]"' in capsys.readouterr().err


def test_a_job_that_runs_out_of_memory_or_hits_a_bug_fails_alone_and_the_next_one_runs(client, monkeypatch):
    shelf = client.app.state.server.shelf
    real = shelf.get("emoji")
    errors = iter([RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
                   KeyError("oops")])

    class Failing:
        defaults = {"steps": 20}

        def __call__(self, *args, **kwargs):
            raise next(errors)

    monkeypatch.setattr(shelf, "get", lambda model, loras=None: Failing() if model == "shapes" else real)
    oom, bug = (finished(client, client.post("/api/jobs", json={"prompt": "", "model": "shapes"}).json()["id"])
                for _ in range(2))
    assert oom["state"] == "failed" and oom["error"].startswith("out of memory: ask for fewer or smaller images")
    assert bug["state"] == "failed" and bug["error"].startswith("internal error, a bug in t2i (KeyError")
    assert finished(client, client.post("/api/jobs", json=FAST).json()["id"])["state"] == "done"
