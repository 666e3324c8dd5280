"""`t2i serve --lora-dir/--embeddings-dir`: LoRAs named in prompts as AUTOMATIC1111 writes them,
`<lora:name:scale>`, applied to their job alone; embeddings added to the models they fit."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from t2i import Pipeline  # noqa: E402
from t2i.cli import main  # noqa: E402
from t2i.convert.lora_names import save_lora  # noqa: E402
from t2i.errors import UserError  # noqa: E402
from t2i.metadata import lora_tags  # noqa: E402
from t2i.models.lora import LowRankUpdate, attention_projections  # noqa: E402
from t2i.serve.app import ServerSettings, create_app  # noqa: E402

from test_serve import finished  # noqa: E402

FAST = {"prompt": "red heart", "steps": 3, "seed": 7}


def test_lora_tags_come_out_of_the_prompt_with_their_scales():
    assert lora_tags("red heart") == ("red heart", {})
    assert lora_tags("a <lora:ink:0.5> red heart, <lora:glow>") == ("a red heart,", {"ink": 0.5, "glow": 1.0})
    assert lora_tags("<lora: ink :-1.25>heart") == ("heart", {"ink": -1.25})
    for prompt, message in [("<lora:ink:x>", "must be a number"), ("<lora:ink:11>", "from -10 to 10"),
                            ("<lora:ink:nan>", "must be a number"), ("<lora::1>", "names no LoRA"),
                            ("<lora:ink> and <lora:ink:2>", "twice")]:
        with pytest.raises(UserError, match=message):
            lora_tags(prompt)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """A tiny random SD v1 folder (LoRA files adapt Stable Diffusion's layers, by their names)."""
    pytest.importorskip("diffusers")
    from tiny_sd import tiny_sd_folder

    return tiny_sd_folder(tmp_path_factory.mktemp("serve_sd"))


def sd_lora(sd, path, seed: int = 0):
    """A LoRA of rank 2 on every attention projection of the tiny SD's U-Net, large enough to show, in kohya's
    layout (AUTOMATIC1111's)."""
    pipe = Pipeline.load(sd, "cpu")
    generator = torch.Generator().manual_seed(seed)
    updates = {}
    for name in attention_projections(pipe.unet):
        layer = pipe.unet.get_submodule(name)
        updates[name] = LowRankUpdate(torch.randn(2, layer.in_features, generator=generator),
                                      torch.randn(layer.out_features, 2, generator=generator), 2.0)
    return save_lora({"unet": updates}, pipe.loras.networks, path)


@pytest.fixture(scope="module")
def lora_dir(sd, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    sd_lora(sd, folder / "styles" / "ink.safetensors")  # found in a subfolder too, by its name
    return folder


@pytest.fixture
def client(tmp_path, sd, lora_dir):
    app = create_app(ServerSettings(tmp_path / "data", (str(sd),), lora_dir=lora_dir))
    with TestClient(app) as client:
        yield client


def job_images(client, body) -> tuple[dict, list[np.ndarray]]:
    job = finished(client, client.post("/api/jobs", json=body).json()["id"])
    assert job["state"] == "done", job["error"]
    return job, [np.asarray(Image.open(io.BytesIO(client.get(image["url"]).content)).convert("RGB"))
                 for image in job["images"]]


def test_a_tag_applies_its_lora_to_its_job_alone(client, sd, lora_dir):
    _, (plain,) = job_images(client, FAST)
    job, (styled,) = job_images(client, {**FAST, "prompt": "red heart <lora:ink:0.8>"})
    assert np.abs(styled.astype(int) - plain).mean() > 5
    assert job["settings"]["prompt"] == "red heart <lora:ink:0.8>"  # as asked: "use these settings" keeps it
    parameters = job["images"][0]["parameters"]
    assert parameters["prompt"] == "red heart" and parameters["loras"] == {"ink": 0.8}
    image = Image.open(io.BytesIO(client.get(job["images"][0]["url"]).content))
    assert image.text["parameters"].startswith("red heart <lora:ink:0.8>\n")

    direct = Pipeline.load(sd, "cpu", loras=[(lora_dir / "styles" / "ink.safetensors", 0.8)])
    np.testing.assert_array_equal(styled, np.asarray(direct("red heart", steps=3, seed=7, progress=False)[0]))
    _, (again,) = job_images(client, FAST)  # the next job without the tag: the LoRA is gone, exactly
    np.testing.assert_array_equal(again, plain)


def test_unknown_loras_and_tags_in_the_negative_prompt_are_refused_at_the_request(client, tmp_path):
    for body, message in [({"prompt": "heart <lora:nope>"}, "no LoRA 'nope' in this server's --lora-dir: choose "
                           "one of ink"),
                          ({"prompt": "heart", "negative_prompt": "<lora:ink>"}, "not the negative prompt"),
                          ({"prompt": "heart <lora:ink:99>"}, "from -10 to 10")]:
        response = client.post("/api/jobs", json=body)
        assert response.status_code == 422 and message in response.json()["detail"], response.json()
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "heart <lora:nope:1>", "steps": 1})
    assert response.status_code == 422 and "no LoRA 'nope'" in response.json()["detail"]

    with TestClient(create_app(ServerSettings(tmp_path / "bare", ("emoji",)))) as bare:  # no --lora-dir
        response = bare.post("/api/jobs", json={"prompt": "heart <lora:ink>"})
        assert response.status_code == 422 and "start it with --lora-dir" in response.json()["detail"]


def test_the_loras_are_listed_and_refreshed_as_automatic1111_lists_them(client, sd, lora_dir):
    assert client.get("/api/loras").json() == {"loras": ["ink"]}
    assert client.get("/sdapi/v1/loras").json() == [{"name": "ink", "alias": "ink",
                                                     "path": "styles/ink.safetensors", "metadata": {}}]
    sd_lora(sd, lora_dir / "glow.safetensors", seed=1)
    try:
        assert client.get("/api/loras").json() == {"loras": ["ink"]}  # read when the server starts ...
        client.post("/sdapi/v1/refresh-loras")
        assert client.get("/api/loras").json() == {"loras": ["glow", "ink"]}  # ... and when refreshed
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "red heart <lora:glow:0.5> <lora:ink:0.5>",
                                                          "steps": 2, "seed": 3})
        assert response.status_code == 200, response.json()
        infotext = json.loads(response.json()["info"])["infotexts"][0]
        assert infotext.startswith("red heart <lora:glow:0.5> <lora:ink:0.5>\n")
    finally:
        (lora_dir / "glow.safetensors").unlink()


def test_a_lora_that_does_not_fit_fails_its_job_in_one_line_and_the_next_job_runs(tmp_path, sd, lora_dir):
    folder = tmp_path / "loras"
    folder.mkdir()
    save_file({"lora_unet_nothing_here.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_nothing_here.lora_up.weight": torch.zeros(4, 2)}, str(folder / "x.safetensors"))
    (folder / "ink.safetensors").symlink_to(lora_dir / "styles" / "ink.safetensors")
    settings = ServerSettings(tmp_path / "data", (str(sd), "emoji"), lora_dir=folder)
    with TestClient(create_app(settings)) as client:
        for body, message in [({**FAST, "prompt": "heart <lora:x>"}, "matches no layer of this model's unet"),
                              ({**FAST, "prompt": "heart <lora:ink>", "model": "emoji"}, "is not Stable Diffusion's")]:
            job = finished(client, client.post("/api/jobs", json=body).json()["id"])
            assert job["state"] == "failed" and message in job["error"] and "\n" not in job["error"], job["error"]
            assert finished(client, client.post("/api/jobs", json=FAST).json()["id"])["state"] == "done"


def test_generate_points_a_tag_at_its_lora_flag(tmp_path, capsys):
    assert main(["generate", "red heart <lora:ink:0.5>", "--out", str(tmp_path / "x.png")]) != 0
    err = capsys.readouterr().err.strip()
    assert "--lora FILE[:SCALE]" in err and "\n" not in err


def test_embeddings_join_the_models_they_fit_and_the_rest_are_listed_as_skipped(tmp_path, sd):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    vectors = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))  # the tiny CLIP's width
    save_file({"emb_params": vectors}, str(folder / "sks-style.safetensors"))
    save_file({"emb_params": torch.zeros(1, 1024)}, str(folder / "sd2-only.safetensors"))
    toy = torch.randn(64, generator=torch.Generator().manual_seed(1))
    save_file({"<cat-toy>": toy}, str(folder / "toy.safetensors"))  # diffusers' layout, with a word of its own
    settings = ServerSettings(tmp_path / "data", (str(sd), "emoji"), embeddings_dir=folder)
    body = {"prompt": "a cat in sks-style", "steps": 2, "seed": 1}
    with TestClient(create_app(settings)) as client:
        job = finished(client, client.post("/api/jobs", json=body).json()["id"])
        assert job["state"] == "done", job["error"]
        served = np.asarray(Image.open(io.BytesIO(client.get(job["images"][0]["url"]).content)).convert("RGB"))
        direct = Pipeline.load(sd, "cpu", embeddings=[folder / "sks-style.safetensors"])
        expected = direct("a cat in sks-style", steps=2, seed=1, progress=False)[0]
        np.testing.assert_array_equal(served, np.asarray(expected))

        # called by its file name, as AUTOMATIC1111 calls every embedding, not by the word inside it
        job = finished(client, client.post("/api/jobs", json={**body, "prompt": "a cat, toy"}).json()["id"])
        served = np.asarray(Image.open(io.BytesIO(client.get(job["images"][0]["url"]).content)).convert("RGB"))
        direct = Pipeline.load(sd, "cpu", embeddings=[(folder / "toy.safetensors", "toy")])
        np.testing.assert_array_equal(served, np.asarray(direct("a cat, toy", steps=2, seed=1, progress=False)[0]))

        answer = client.get("/sdapi/v1/embeddings").json()
        assert answer["loaded"]["sks-style"]["vectors"] == 2 and answer["loaded"]["sks-style"]["shape"] == 64
        assert answer["loaded"]["toy"]["vectors"] == 1
        assert list(answer["skipped"]) == ["sd2-only"]
        finished(client, client.post("/api/jobs", json={**FAST, "model": "emoji"}).json()["id"])
        ours = client.get("/api/embeddings").json()
        assert ours["embeddings"] == ["sd2-only", "sks-style", "toy"]
        assert "SD 2.x embedding" in ours["skipped"]["pipe"]["sd2-only"]
        assert set(ours["skipped"]["emoji"]) == {"sd2-only", "sks-style", "toy"}  # BERT's tokenizer takes no new words

        # one added and refreshed while the model is loaded: its next job has it
        save_file({"emb_params": vectors.flip(0)}, str(folder / "late.safetensors"))
        client.post("/sdapi/v1/refresh-embeddings")
        job = finished(client, client.post("/api/jobs", json={**body, "prompt": "a cat, late"}).json()["id"])
        served = np.asarray(Image.open(io.BytesIO(client.get(job["images"][0]["url"]).content)).convert("RGB"))
        direct.load_embedding(folder / "late.safetensors")
        np.testing.assert_array_equal(served, np.asarray(direct("a cat, late", steps=2, seed=1, progress=False)[0]))
        assert "late" in client.get("/sdapi/v1/embeddings").json()["loaded"]
