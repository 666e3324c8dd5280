import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data import ImageFolder, ShapesDataset, load_dataset
from t2i.data.shapes import COLOURS, POSITIONS, SHAPES
from t2i.errors import UserError


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(60):
        size = (40 + i % 7, 30 + i % 5)  # not square, not the target size
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(tmp_path / f"img{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_resizes_and_crops_to_quantised_tensors(folder):
    data = ImageFolder(folder, image_size=16)
    assert len(data) == 60
    x = data[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    levels = (x + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_train_and_test_splits_are_disjoint_and_cover_the_folder(folder):
    train, test = ImageFolder(folder, 16, "train", 0.2), ImageFolder(folder, 16, "test", 0.2)
    assert set(train.files).isdisjoint(test.files)
    assert len(train) + len(test) == 60 and len(test) > 0


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no images in"):
        ImageFolder(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        ImageFolder(tmp_path / "missing")


def test_corrupt_image_is_a_user_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="cannot read image"):
        ImageFolder(tmp_path)[0]


def test_shapes_are_deterministic_per_index_with_disjoint_splits():
    train, again, test = ShapesDataset(100, 32), ShapesDataset(100, 32), ShapesDataset(100, 32, "test")
    assert torch.equal(train[5], again[5])
    assert train.scene(5) == again.scene(5)
    assert any(train.scene(i) != test.scene(i) for i in range(10))
    assert load_dataset("shapes", 32, "test").split == "test"


def test_shapes_draw_the_attributes_they_record():
    data = ShapesDataset(200, 32)
    for i in range(200):
        scene = data.scene(i)
        obj = scene.objects[0]
        assert obj.colour in COLOURS and obj.shape in SHAPES and obj.position in POSITIONS
        assert obj.colour != scene.background
        image = np.asarray(Image.fromarray(((data[i].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()))
        cx, cy = POSITIONS[obj.position]
        # the object's centre (slightly below it for triangles, whose centroid is low) has its colour
        y, x = int((cy + obj.dy + (0.05 if obj.shape == "triangle" else 0)) * 32), int((cx + obj.dx) * 32)
        assert np.abs(image[y, x].astype(int) - COLOURS[obj.colour]).max() < 40, (i, scene)


def test_a_captioned_folder_reads_the_text_beside_each_image(tmp_path):
    for name, text in (("a.png", "a red  circle\n"), ("b.png", "a blue square")):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text(text)
    data = ImageFolder(tmp_path, 8, captioned=True)
    assert [data[i][1] for i in range(2)] == ["a red circle", "a blue square"]
    (tmp_path / "b.txt").unlink()
    with pytest.raises(UserError, match="1 of 2 images .* have no caption file"):
        ImageFolder(tmp_path, 8, captioned=True)
